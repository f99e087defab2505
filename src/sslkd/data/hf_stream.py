"""A Hugging Face dataset read as a stream (``data.name: hf`` with ``data.options.streaming: true``):
pretraining on a Hub set larger than the disk, or on local Parquet / Arrow files or a
``save_to_disk`` folder without reading it into memory or the cache.

Training reads the training split through :class:`HFStream` (see :mod:`sslkd.data.stream`): each
epoch in ``datasets``' own seeded order (``shuffle(seed, buffer_size)``: the shards in a random
order, rows mixed in a buffer of ``data.options.shuffle_buffer``; ``set_epoch`` reorders every
epoch), split between processes (``split_dataset_by_node``) and loader workers (by shard). An
epoch is the split's row count: ``data.options.num_examples``, else the dataset card's, else the
local Parquet files' footers. ``datasets``' own ``skip`` and ``state_dict`` are not used: ``skip``
fixes the shard order of every later epoch and ``state_dict`` loses the shuffle buffer.

Everything that needs labels or random access (evaluations, the training monitor's held-out
split) reads ``data.options.eval_rows`` rows of a split from the same shuffled stream into
memory, as a table :func:`~sslkd.data.hf.read_split` turns into an indexed source. A split sorted
by class is then a skewed sample unless the buffer mixes beyond a class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from io import BytesIO
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sslkd.data.base import DatasetError, ImageArrayDataset
from sslkd.data.folder import UNREADABLE, CorruptImageError
from sslkd.data.hf import HFImages, HFOptions, hfd, image_column, open_splits, pick_split, read_split
from sslkd.data.stream import ImageStream
from sslkd.lazy import optional_import

hf_distributed = optional_import("datasets.distributed", extra="hf", feature="data.options.streaming")
hf_file_utils = optional_import("datasets.utils.file_utils", extra="hf", feature="data.options.streaming")
parquet = optional_import("pyarrow.parquet", extra="hf", feature="data.options.streaming")

GRAY = ("L", "1", "I;16", "I;16B", "I;16L", "I", "F", "LA")


class HFStream(ImageStream):
    """The training split of a streamed dataset (see the module docstring)."""

    def __init__(self, source, key: str, count: int, seed: int, buffer: int, channels: int, img_size: int, name: str):
        self.source, self.key, self.count, self.seed, self.buffer = source, key, count, seed, buffer
        self._init(np.zeros(0, dtype=np.int64), [], channels, img_size, name)

    def __len__(self) -> int:
        return self.count

    def shards(self, world: int) -> int:
        n = self.source.num_shards  # split_dataset_by_node: by shards when they divide evenly
        return n // world if n % world == 0 else n

    def rows(self, epoch: int, rank: int, world: int) -> Iterator[tuple[Any, int, str]]:
        ds = self.source.shuffle(seed=self.seed, buffer_size=self.buffer)
        if world > 1:
            ds = hf_distributed.split_dataset_by_node(ds, rank=rank, world_size=world)
        ds.set_epoch(epoch)  # after the split: split_dataset_by_node starts its dataset at epoch 0
        for i, row in enumerate(ds):  # inside a loader worker: that worker's shards only
            cell = row[self.key]
            data = (cell.get("bytes") or cell.get("path")) if isinstance(cell, dict) else cell
            path = cell.get("path") if isinstance(cell, dict) else None
            name = f"{self.name}:{path}" if path else f"{self.name} (row {i} of epoch {epoch}'s stream here)"
            yield (data if data is not None else b""), -1, name

    def open(self, data: Any) -> Any:
        """Bytes, a local path, or a file of the dataset's repository (``hf://``, ``zip://...``: a
        cell that holds only a path, as folder-based Hub datasets stream them)."""
        if isinstance(data, str) and "://" in data:
            try:
                return BytesIO(read_remote(data))
            except OSError as e:
                raise CorruptImageError(f"cannot read {data}: {e}") from None
        return super().open(data)


def read_remote(path: str) -> bytes:
    with hf_file_utils.xopen(path, "rb") as f:
        return f.read()


def row_count(root: str, name: str, split, options: HFOptions, where: str) -> int:
    """The rows of streamed split ``name`` (see the module docstring); none found is an error."""
    if options.num_examples:
        return options.num_examples
    splits = getattr(split.info, "splits", None)
    if splits and name in splits and splits[name].num_examples:
        return int(splits[name].num_examples)
    path = Path(root.removeprefix("hf:")).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
        loaded = hfd.load_from_disk(str(path))  # memory-mapped: the count without reading rows
        return len(loaded if isinstance(loaded, hfd.Dataset) else loaded[name])
    if path.is_dir():
        files = list(hfd.load_dataset_builder(str(path)).config.data_files.get(name, []))
        if files and all(str(f).endswith(".parquet") for f in files):
            return sum(parquet.ParquetFile(f).metadata.num_rows for f in files)
    raise DatasetError(f"{where} does not say how many rows it has: set data.options.num_examples (an epoch's images)")


def head(split, options: HFOptions):
    """``options.eval_rows`` rows of a streamed split as an in-memory table, from its stream shuffled
    with seed 0 (the same rows for every run: evaluations compare runs), images left encoded (the
    bytes as stored; a cell that holds only a repository path is read into bytes here)."""
    images = [k for k, f in split.features.items() if isinstance(f, hfd.Image)]
    for key in images:
        split = split.cast_column(key, hfd.Image(decode=False))
    rows = list(islice(iter(split.shuffle(seed=0, buffer_size=options.shuffle_buffer)), options.eval_rows))
    for row in rows:
        for key in images:
            cell = row[key]
            if cell and cell.get("bytes") is None and "://" in (cell.get("path") or ""):
                with contextlib.suppress(OSError):  # unread: a bad row under data.on_corrupt
                    row[key] = {"bytes": read_remote(cell["path"]), "path": cell["path"]}
    return hfd.Dataset.from_list(rows, features=split.features)


def load_hf_stream(
    root: str | None,
    split: str,
    options: HFOptions,
    stream: bool,
    seed: int = 0,
    img_size: int | None = None,
    on_corrupt: str = "fail",
    in_memory: bool | None = None,
    classes: list[str] | None = None,
    channels: int | None = None,
    verbose: bool = False,
    labels: str = "auto",
) -> HFStream | HFImages | ImageArrayDataset:
    """``train`` as a :class:`HFStream` when the caller reads a stream (``stream``: pretraining),
    else the first ``eval_rows`` rows of ``train`` or ``test`` (the held-out split) in memory."""
    if not root:
        raise DatasetError("hf: set data.root to a save_to_disk folder, a folder of Parquet/Arrow files or a Hub id")
    name, split_ds = pick_split(open_splits(str(root), options, streaming=True), str(root), split, options)
    where = f"hf:{str(root).removeprefix('hf:')}[{name}]"
    if split_ds.features is None:
        raise DatasetError(f"{where}: the stream does not say its columns; set data.options.image_key")
    if not (stream and split == "train"):
        table = head(split_ds, options)
        where = f"{where} ({len(table)} rows streamed)"
        return read_split(table, where, options, img_size, on_corrupt, in_memory, classes, channels, verbose, labels)
    key = image_column(split_ds, options.image_key, where)
    source = split_ds.select_columns([key])
    if isinstance(source.features[key], hfd.Image):
        source = source.cast_column(key, hfd.Image(decode=False))
    count = row_count(str(root), name, split_ds, options, where)
    where = f"{where} (streamed)"
    first = HFStream(source, key, count, seed, options.shuffle_buffer, 3, img_size or 224, where)
    channels = channels or options.channels or (1 if gray_sample(first) else 3)
    if verbose:
        print(f"{where}: {count} images a pass, streamed ({source.num_shards} shards)")
    return HFStream(source, key, count, seed, options.shuffle_buffer, channels, img_size or 224, where)


def headers(stream: HFStream, sample: int = 32) -> list[tuple[tuple[int, int], str]]:
    """(size, mode) of the stream's first ``sample`` images as stored (headers only); an unreadable
    one is left out (the loader meets it under ``data.on_corrupt``)."""
    found = []
    for row in islice(iter(stream.source), sample):  # unshuffled: a shuffle fills its whole buffer first
        cell = row[stream.key]
        data = (cell.get("bytes") or cell.get("path")) if isinstance(cell, dict) else cell
        try:
            with Image.open(stream.open(data if data is not None else b"")) as im:
                found.append((im.size, im.mode))
        except (CorruptImageError, *UNREADABLE):
            continue
    return found


def gray_sample(stream: HFStream) -> bool:
    """Whether the first images of the stream are all grayscale."""
    modes = [mode for _, mode in headers(stream)]
    return bool(modes) and all(m in GRAY for m in modes)


def stream_header_sides(root: str, options: HFOptions, sample: int = 64) -> tuple[list[int], int]:
    """Shorter sides of the first ``sample`` training images of a streamed set and its row count
    (:func:`~sslkd.data.hf.header_sides` for a stream: nothing else is read)."""
    stream = load_hf_stream(root, "train", options, stream=True, channels=3)
    return [min(size) for size, _ in headers(stream, sample)], len(stream)
