"""Any folder of images: ``root/train`` + ``root/val`` (or ``test``), or one folder of any depth.

Two ways of reading the same tree, chosen by ``in_memory`` (``None``: automatically):

- **lazy** (:class:`~sslkd.data.folder.ImageFolderDataset`): files decoded per item in the loader
  workers at their own size; memory holds paths, not images. Photos, ImageNet, anything large.
- **in memory** (:class:`~sslkd.data.base.ImageArrayDataset`): every image decoded once (threads:
  PIL releases the GIL) into one uint8 array, cached under ``$SSLKD_CACHE``. Faster for small
  images of one size (the CIFAR-10 tree here), chosen when the decoded set is small.

Splits: ``train`` is ``root/train`` when it exists, else ``root`` itself; ``test`` is
``root/val`` or ``root/test``. A tree without a held-out split has no ``test``: a figure on
training images measures fitting, and is never reported as test accuracy.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from sslkd.data.base import DatasetError, ImageArrayDataset, NoHeldOutSplitError
from sslkd.data.folder import (
    UNREADABLE,
    CorruptImageError,
    FolderIndex,
    ImageFolderDataset,
    cache_dir,
    decode,
    guess_channels,
    scan_folder,
)

IN_MEMORY_MAX_BYTES = 2 << 30  # decoded uint8 bytes up to which `auto` reads a tree into memory
HELD_OUT = ("val", "test")


def split_root(root: Path, split: str) -> Path:
    """The folder of ``split`` in ``root`` (see the module docstring); a clear error if none."""
    if not root.is_dir():
        raise DatasetError(f"imagefolder: {root} does not exist or is not a folder")
    if split == "train":
        if (root / "train").is_dir():
            return root / "train"
        held = [n for n in HELD_OUT if (root / n).is_dir()]
        if held:  # training on root would take the held-out images in
            raise DatasetError(
                f"imagefolder: {root} has {held[0]}/ but no train/: put the training images in "
                f"{root}/train (or point data.root at a folder without a held-out split)"
            )
        return root
    for name in HELD_OUT:
        if (root / name).is_dir():
            return root / name
    raise NoHeldOutSplitError(
        f"imagefolder: {root} has no held-out split ({root}/val or {root}/test does not exist); "
        f"accuracy needs images the model was not fitted on: arrange root/train/<class>/... "
        f"and root/val/<class>/..."
    )


def header_sizes(root: Path, paths: list[str], sample: int = 16) -> list[tuple[int, int]]:
    """(width, height) of up to ``sample`` evenly spaced images, read from their headers (unreadable
    files skipped: the loader meets them under ``data.on_corrupt``)."""
    sizes = []
    for i in np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int):
        try:
            with Image.open(root / paths[i]) as im:
                sizes.append(im.size)
        except UNREADABLE:
            continue
    return sizes


def choose_in_memory(index: FolderIndex, channels: int, img_size: int | None) -> tuple[bool, str]:
    """``auto``: in memory when the sampled images share one size and the decoded set fits in
    :data:`IN_MEMORY_MAX_BYTES`; photos of several sizes are read lazily so that crops come from
    each original (``img_size`` never squashes them to a square, unless ``in_memory`` is asked
    for). Returns the choice and the reason."""
    sizes = set(header_sizes(index.root, index.paths))
    if len(sizes) > 1:
        return False, "images of several sizes"
    w, h = (img_size, img_size) if img_size else next(iter(sizes), (224, 224))
    need = len(index.paths) * w * h * channels
    if need > IN_MEMORY_MAX_BYTES:
        return False, f"{need / 2**30:.1f} GiB decoded > {IN_MEMORY_MAX_BYTES / 2**30:.0f} GiB"
    return True, f"{len(index.paths)} images of {w}x{h}, {need / 2**20:.0f} MiB decoded"


def load_imagefolder(
    root: str | Path,
    split: str | None = None,
    img_size: int | None = None,
    channels: int | None = None,
    on_corrupt: str = "fail",
    use_cache: bool = True,
    in_memory: bool | None = None,
    labels: str = "auto",
    verbose: bool = False,
    classes: list[str] | None = None,
) -> ImageArrayDataset | ImageFolderDataset:
    """The ``split`` of the tree at ``root`` (``None``: ``root`` itself), lazy or in memory;
    ``classes``: the training split's (a held-out split is labelled by them)."""
    root = Path(root).expanduser()
    folder = split_root(root, split) if split else root
    index = scan_folder(folder, labels, use_cache, classes)
    if index.ignored:
        warnings.warn(
            f"imagefolder: ignored {index.ignored} non-image file(s), link loop(s) or unreadable folder(s) "
            f"under {folder} (e.g. {index.ignored_example})",
            stacklevel=2,
        )
    channels = channels or guess_channels(folder, index.paths)
    why = "data.in_memory set"
    if in_memory is None:
        in_memory, why = choose_in_memory(index, channels, img_size)
    if verbose:
        print(
            f"imagefolder {folder}: {len(index.paths)} images, "
            f"{len(index.classes) or 'no'} classes, {'in memory' if in_memory else 'read lazily'} ({why})"
        )
    if not in_memory:
        return ImageFolderDataset(index, channels, img_size or 224)
    return _load_in_memory(index, channels, img_size, on_corrupt, use_cache)


def _decode_array(path: Path, channels: int, size: int | None) -> np.ndarray | None:
    try:
        im = decode(path, channels)
    except CorruptImageError:
        return None
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8).reshape(im.size[1], im.size[0], channels)


def _load_in_memory(
    index: FolderIndex, channels: int, img_size: int | None, on_corrupt: str, use_cache: bool
) -> ImageArrayDataset:
    root, classes = index.root, index.classes
    files = [root / p for p in index.paths]
    key = f"v2|{root.resolve()}|{img_size}|{channels}|{on_corrupt}|{classes}"
    key = hashlib.sha1(key.encode(errors="surrogateescape"))
    key.update(index.labels.tobytes())
    for f in files:
        key.update(f"{f.relative_to(root)}:{f.stat().st_size}".encode(errors="surrogateescape"))
    cached = cache_dir() / f"imagefolder-{key.hexdigest()[:16]}.npz"
    if use_cache and cached.is_file():
        try:
            with np.load(cached) as z:
                return ImageArrayDataset(
                    z["images"], z["labels"], classes, name=f"imagefolder:{root}", skipped=int(z["skipped"])
                )
        except Exception:
            warnings.warn(f"ignoring unreadable cache {cached}", stacklevel=2)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        decoded = list(pool.map(lambda p: _decode_array(p, channels, img_size), files))
    bad = [f for f, d in zip(files, decoded) if d is None]
    if bad and on_corrupt == "fail":
        raise DatasetError(
            f"imagefolder: cannot decode {bad[0]}"
            + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
            + "; --set data.on_corrupt=skip skips and counts them"
        )
    keep = [i for i, d in enumerate(decoded) if d is not None]
    if bad:
        warnings.warn(f"imagefolder: skipped {len(bad)} corrupt file(s) under {root}, first {bad[0]}", stacklevel=2)
    if not keep:
        raise DatasetError(f"imagefolder: none of the images under {root} could be decoded")
    shapes = {decoded[i].shape for i in keep}
    if len(shapes) > 1:
        first = {}
        for i in keep:
            first.setdefault(decoded[i].shape, files[i])
        desc = ", ".join(f"{s[1]}x{s[0]} (e.g. {p})" for s, p in list(first.items())[:3])
        raise DatasetError(
            f"imagefolder: {root} mixes image sizes: {desc}; read it lazily "
            f"(data.in_memory=false) or set data.img_size to resize"
        )
    images = np.stack([decoded[i] for i in keep])
    lab = index.labels[keep]
    if use_cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(cached.stem + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, images=images, labels=lab, skipped=len(bad))
            os.replace(tmp, cached)
        except OSError as e:
            warnings.warn(f"could not write cache {cached}: {e}", stacklevel=2)
    return ImageArrayDataset(images, lab, classes, name=f"imagefolder:{root}", skipped=len(bad))
