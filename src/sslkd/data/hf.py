"""Hugging Face ``datasets`` as an image source (``data.name: hf``; the ``hf`` extra).

``data.root`` is a folder written by ``save_to_disk`` (a ``DatasetDict`` of splits, or one
``Dataset``: a training split only), a folder of Parquet / Arrow files (splits from the file
names, ``train-*.parquet``, ``test-*.parquet``, as ``load_dataset`` reads them), or a Hub id
(``user/name``, where a network exists; downloaded once into the Hugging Face cache).

Rows stay in the memory-mapped Arrow table and each image is decoded when a worker asks for it
(:class:`HFImages`, a :class:`~sslkd.data.folder.LazyImages`: crops keep each photo's own size,
undecodable images follow ``data.on_corrupt``); a small set of one image size is decoded into
memory once instead (``data.in_memory``, automatic as for a folder). Columns are chosen by key:
the image column is the first ``Image`` feature unless ``data.options.image_key`` names one, the
labels the first ``ClassLabel`` (or an integer ``label`` column) unless ``label_key`` names one
(``none``: unlabelled, for pretraining only).
"""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from sslkd.data.base import DatasetError, ImageArrayDataset, NoHeldOutSplitError
from sslkd.data.folder import UNREADABLE, CorruptImageError, LazyImages, decode
from sslkd.lazy import optional_import
from sslkd.schema import Positive

hfd = optional_import("datasets", extra="hf", feature="data.name=hf")

HELD_OUT = ("validation", "valid", "val", "test")  # the held-out split, when test_split is not set
IN_MEMORY_MAX_BYTES = 2 << 30  # decoded bytes up to which `auto` decodes a one-size set into memory
STREAM_SHARDS = 64  # shards a save_to_disk split is cut into when streamed (for processes x workers)


@dataclass
class HFOptions:
    image_key: str | None = None  # the image column (None: the first Image feature)
    label_key: str | None = None  # the label column (None: a ClassLabel, else an integer 'label'; none: no labels)
    train_split: str = "train"  # the split pretraining and the probes' training use
    test_split: str | None = None  # the held-out split (None: the first of validation, valid, val, test)
    config: str | None = None  # a Hub dataset's configuration (load_dataset's name)
    revision: str | None = None  # a Hub dataset's branch, tag or commit
    channels: Literal[1, 3] | None = None  # 3: RGB, 1: grayscale (None: RGB unless sampled images are all gray)
    streaming: bool = False  # pretrain on the training split as a stream (a Hub set larger than the disk)
    num_examples: Positive | None = None  # a streamed split's rows (None: from the card or Parquet footers)
    shuffle_buffer: Positive = 10_000  # rows a stream mixes in its shuffle buffer (shards are shuffled too)
    eval_rows: Positive = 10_000  # rows of each split evaluations read from a stream (into memory)


def is_hf(root: Path) -> bool:
    """Whether folder ``root`` holds a ``save_to_disk`` dataset or Parquet / Arrow files."""
    if any((root / f).is_file() for f in ("dataset_dict.json", "state.json")):
        return True
    return any(p.suffix in (".parquet", ".arrow") for d in (root, root / "data") if d.is_dir() for p in d.iterdir())


def open_splits(root: str, options: HFOptions, streaming: bool = False) -> dict:
    """The splits of ``root`` (see the module docstring) as ``{name: datasets.Dataset}``, or with
    ``streaming`` as ``{name: datasets.IterableDataset}`` (nothing downloaded or copied)."""
    root = root.removeprefix("hf:")
    path = Path(root).expanduser()
    hub = not path.exists() and not root.startswith((".", "/", "~")) and root.count("/") <= 1
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            loaded = hfd.load_from_disk(str(path))
            if streaming:
                one = isinstance(loaded, hfd.Dataset)
                parts = {options.train_split: loaded} if one else dict(loaded)
                return {k: v.to_iterable_dataset(min(STREAM_SHARDS, max(1, len(v)))) for k, v in parts.items()}
        elif path.is_dir():
            loaded = hfd.load_dataset(str(path), streaming=streaming)
        elif hub:
            loaded = hfd.load_dataset(root, options.config, revision=options.revision, streaming=streaming)
        else:
            raise DatasetError(f"hf: {root} is not a dataset folder (save_to_disk, Parquet or Arrow files)")
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"no folder {root} and no Hub dataset {root}" if hub else f"cannot load {root}"
        raise DatasetError(f"hf: {where}: {first}") from None
    one = isinstance(loaded, hfd.Dataset | hfd.IterableDataset)
    return {options.train_split: loaded} if one else dict(loaded)


def pick_split(splits: dict, root: str, split: str, options: HFOptions):
    if split == "train":
        name = options.train_split
        if name not in splits:
            raise DatasetError(
                f"hf: {root} has no split '{name}' (it has {', '.join(splits)}); set data.options.train_split"
            )
        return name, splits[name]
    name = options.test_split or next((s for s in HELD_OUT if s in splits), None)
    if name is None or name == options.train_split:
        raise NoHeldOutSplitError(
            f"hf: {root} has no held-out split (it has {', '.join(splits)}); accuracy needs images the model was "
            f"not fitted on: set data.options.test_split"
        )
    if name not in splits:
        raise DatasetError(f"hf: {root} has no split '{name}' (it has {', '.join(splits)})")
    return name, splits[name]


def image_column(table, key: str | None, where: str) -> str:
    if key is None:
        key = next((k for k, f in table.features.items() if isinstance(f, hfd.Image)), None)
        if key is None:
            raise DatasetError(
                f"hf: {where} has no Image column (columns: {', '.join(table.features)}); set data.options.image_key"
            )
    elif key not in table.features:
        raise DatasetError(f"hf: {where} has no column '{key}' (columns: {', '.join(table.features)})")
    feature = table.features[key]
    if not isinstance(feature, hfd.Image) and getattr(feature, "dtype", "") not in ("binary", "large_binary"):
        raise DatasetError(
            f"hf: {where} column '{key}' holds {feature}, not images (an Image feature or encoded bytes)"
        )
    return key


def image_table(table, key: str):
    """Column ``key`` of ``table`` alone, its images left encoded (bytes to our decoder, in the worker)."""
    table = table.select_columns([key])
    return table.cast_column(key, hfd.Image(decode=False)) if isinstance(table.features[key], hfd.Image) else table


def read_labels(table, key: str | None, where: str, classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Labels ``[N]`` (``-1``: unlabelled) and class names; a held-out split is labelled by the
    training split's ``classes`` (its values looked up by name)."""
    feats = table.features
    if key is None:
        key = next((k for k, f in feats.items() if isinstance(f, hfd.ClassLabel)), None)
        if key is None and "label" in feats and str(getattr(feats["label"], "dtype", "")).startswith("int"):
            key = "label"
    if key in (None, "none"):
        return np.full(len(table), -1, dtype=np.int64), []
    if key not in feats:
        raise DatasetError(
            f"hf: {where} has no column '{key}' (columns: {', '.join(feats)}); data.options.label_key=none: unlabelled"
        )
    values = np.asarray(table.select_columns([key]).with_format("numpy")[:][key])  # one array, not row by row
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise DatasetError(f"hf: {where} column '{key}' holds {feats[key]}, not one integer class per image")
    known = values >= 0  # -1: an unlabelled row (kept; evaluations leave it out)
    if isinstance(feats[key], hfd.ClassLabel):
        names = list(feats[key].names)
    else:  # integer labels: the classes are the values found, named by themselves
        found = np.unique(values[known])
        names, values = [str(v) for v in found], np.where(known, np.searchsorted(found, values), -1)
    if classes is None:
        return values.astype(np.int64), names
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted({names[v] for v in np.unique(values[known]) if names[v] not in lookup})
    if unknown:
        raise DatasetError(f"hf: {where} has classes the training split lacks: {', '.join(unknown[:5])}")
    table_of = np.asarray([lookup.get(n, -1) for n in names] + [-1], dtype=np.int64)  # [-1]: index -1 stays -1
    return table_of[values], list(classes)


class HFImages(LazyImages):
    """The images of one split, decoded per item from the Arrow table (see :class:`LazyImages`)."""

    def __init__(self, table, key: str, labels, classes, channels: int, img_size: int, name: str, rows=None) -> None:
        self.table, self.key = table, key
        self.rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
        self._init(np.asarray(labels), classes, channels, img_size, name)

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, i: int) -> tuple[bytes | str, str]:
        """Item ``i``'s encoded bytes (or the file an ``Image`` feature points to) and its name."""
        row = int(self.rows[i])
        cell = self.table[row][self.key]
        name = f"{self.name}#{row}"
        if isinstance(cell, dict):
            if cell.get("bytes") is None and not cell.get("path"):
                raise CorruptImageError(f"cannot decode {name}: the row holds no image")
            return (cell["bytes"] if cell.get("bytes") is not None else cell["path"]), name
        if cell is None:
            raise CorruptImageError(f"cannot decode {name}: the row holds no image")
        return cell, name

    def image(self, i: int, draft: int | None = None) -> Image.Image:
        data, name = self.read(i)
        return decode(io.BytesIO(data) if isinstance(data, bytes) else data, self.channels, draft, name=name)

    def header(self, i: int) -> tuple[tuple[int, int], bool] | None:
        """Item ``i``'s (width, height) and whether it is grayscale, from its header (no decoding);
        None when unreadable (the loader meets it under ``data.on_corrupt``)."""
        try:
            data, _ = self.read(i)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
                return im.size, im.mode in ("L", "1", "I;16", "I;16B", "I;16L", "I", "F", "LA")
        except (CorruptImageError, *UNREADABLE):
            return None

    def subset(self, indices: np.ndarray) -> HFImages:
        indices = np.asarray(indices)
        labels, rows = self.labels[indices], self.rows[indices]
        out = HFImages(self.table, self.key, labels, self.classes, self.channels, self.img_size, self.name, rows)
        out.draft = self.draft
        return out


def decode_all(images: HFImages, img_size: int | None, on_corrupt: str) -> ImageArrayDataset:
    """Every image of ``images`` decoded once into one uint8 array (threads: PIL releases the GIL);
    an undecodable image stops the load under ``fail``, is left out and counted under ``skip``."""

    def one(i: int) -> np.ndarray | str:
        try:
            im = images.image(i)
        except CorruptImageError as e:
            return str(e)
        if img_size is not None and im.size != (img_size, img_size):
            im = im.resize((img_size, img_size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8).reshape(im.size[1], im.size[0], images.channels)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        decoded = list(pool.map(one, range(len(images))))
    bad = [d for d in decoded if isinstance(d, str)]
    if bad and on_corrupt == "fail":
        raise DatasetError(f"{bad[0]} ({len(bad)} in all); --set data.on_corrupt=skip skips and counts them")
    if bad:
        warnings.warn(f"{images.name}: skipped {len(bad)} undecodable image(s), first: {bad[0]}", stacklevel=2)
    keep = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    if not keep:
        raise DatasetError(f"{images.name}: no image could be decoded")
    shapes = {decoded[i].shape for i in keep}
    if len(shapes) > 1:
        raise DatasetError(
            f"{images.name} mixes image sizes {sorted(shapes)[:3]}: set data.img_size, or data.in_memory=false"
        )
    return ImageArrayDataset(
        np.stack([decoded[i] for i in keep]), images.labels[keep], images.classes, images.name, skipped=len(bad)
    )


def header_sides(root: str, options: HFOptions | None = None, sample: int = 64) -> tuple[list[int], int]:
    """Shorter sides of up to ``sample`` evenly spaced training images (headers only) and the
    number of training images."""
    options = options or HFOptions()
    _, table = pick_split(open_splits(root, options), root, "train", options)
    key = image_column(table, options.image_key, f"hf:{root.removeprefix('hf:')}")
    images = HFImages(image_table(table, key), key, np.full(len(table), -1), [], 3, 224, f"hf:{root}")
    heads = [images.header(int(i)) for i in np.linspace(0, len(images) - 1, min(sample, len(images))).astype(int)]
    return [min(h[0]) for h in heads if h is not None], len(images)


def load_hf(
    root: str | None,
    split: str,
    options: HFOptions | None = None,
    img_size: int | None = None,
    on_corrupt: str = "fail",
    in_memory: bool | None = None,
    classes: list[str] | None = None,
    channels: int | None = None,
    verbose: bool = False,
    labels: str = "auto",
) -> HFImages | ImageArrayDataset:
    """``train`` or ``test`` (the held-out split) of the dataset at ``root``; a held-out split
    takes the training split's ``classes`` and ``channels``; ``labels="none"`` (``data.labels``)
    reads no label column."""
    if not root:
        raise DatasetError("hf: set data.root to a save_to_disk folder, a folder of Parquet/Arrow files or a Hub id")
    options = options or HFOptions()
    name, split_table = pick_split(open_splits(str(root), options), str(root), split, options)
    where = f"hf:{str(root).removeprefix('hf:')}[{name}]"
    return read_split(split_table, where, options, img_size, on_corrupt, in_memory, classes, channels, verbose, labels)


def read_split(
    split_table,
    where: str,
    options: HFOptions,
    img_size: int | None,
    on_corrupt: str,
    in_memory: bool | None,
    classes: list[str] | None,
    channels: int | None,
    verbose: bool,
    labels: str,
) -> HFImages | ImageArrayDataset:
    """One split's table as a source (see :func:`load_hf`); ``where`` names it in messages."""
    if len(split_table) == 0:
        raise DatasetError(f"{where} has no rows")
    key = image_column(split_table, options.image_key, where)
    label_key = "none" if labels == "none" and options.label_key is None else options.label_key
    found_labels, found = read_labels(split_table, label_key, where, classes)
    table = image_table(split_table, key)
    probe = HFImages(table, key, found_labels, found, 3, 224, where)
    sample = [probe.header(int(i)) for i in np.linspace(0, len(probe) - 1, min(32, len(probe))).astype(int)]
    sample = [h for h in sample if h is not None]
    channels = channels or options.channels or (1 if sample and all(gray for _, gray in sample) else 3)
    lazy = HFImages(table, key, found_labels, found, channels, img_size or 224, where)  # its mean/std by channels
    sizes = {size for size, _ in sample}
    w, h = (img_size, img_size) if img_size else next(iter(sizes), (224, 224))
    fits = len(sizes) <= 1 and len(lazy) * w * h * lazy.channels <= IN_MEMORY_MAX_BYTES
    decoded = fits if in_memory is None else in_memory
    if verbose:
        print(f"{where}: {len(lazy)} images, {len(found) or 'no'} classes, {'in memory' if decoded else 'read lazily'}")
    return decode_all(lazy, img_size, on_corrupt) if decoded else lazy
