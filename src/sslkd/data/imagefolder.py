"""Any ``root/class/image`` tree (ImageNet, ImageNet-100, exported STL-10, the CIFAR-10 here).

Images are decoded once (threads: PIL releases the GIL) and cached as uint8 arrays under
``$SSLKD_CACHE`` (default ``~/.cache/sslkd``), keyed by the tree's file list and sizes.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from sslkd.data.base import DatasetError, ImageArrayDataset

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def cache_dir() -> Path:
    return Path(os.environ.get("SSLKD_CACHE", Path.home() / ".cache" / "sslkd"))


def scan(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of a class-per-folder tree (classes sorted by name)."""
    if not root.is_dir():
        raise DatasetError(f"imagefolder: {root} does not exist or is not a folder "
                           f"(expected root/<class>/<image> files)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"imagefolder: {root} has no class sub-folders (expected root/<class>/<image>)")
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in EXTENSIONS)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetError(f"imagefolder: no image files ({', '.join(sorted(EXTENSIONS))}) under {root}")
    return files, labels, classes


def _decode(path: Path, channels: int, size: int | None) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8).reshape(im.size[1], im.size[0], channels)
    except Exception:  # PIL raises many types for broken files
        return None


def load_imagefolder(root: str | Path, split: str | None = None, img_size: int | None = None,
                     channels: int | None = None, on_corrupt: str = "fail",
                     use_cache: bool = True) -> ImageArrayDataset:
    """Load ``root/<split>/<class>/*`` if that folder exists, else ``root/<class>/*`` (a flat tree:
    its test split is its training images, with a warning)."""
    root = Path(root)
    if split and (root / split).is_dir():
        root = root / split
    elif split and any((root / s).is_dir() for s in ("train", "test")):
        raise DatasetError(f"imagefolder: {root / split} does not exist (the tree has split folders; "
                           f"expected root/{split}/<class>/<image>)")
    elif split == "test":
        warnings.warn(f"imagefolder: {root} has no test/ folder, so the test split is the training "
                      f"images: kNN / linear figures on it measure fitting, not generalisation", stacklevel=2)
    files, labels, classes = scan(root)
    if channels is None:
        with Image.open(files[0]) as im:
            channels = 1 if im.mode in ("L", "1", "I;16", "I") else 3
    key = hashlib.sha1(f"{root.resolve()}|{img_size}|{channels}|{on_corrupt}".encode())
    for f in files:
        key.update(f"{f.relative_to(root)}:{f.stat().st_size}".encode())
    cached = cache_dir() / f"imagefolder-{key.hexdigest()[:16]}.npz"
    if use_cache and cached.is_file():
        try:
            with np.load(cached) as z:
                return ImageArrayDataset(z["images"], z["labels"], classes, name=f"imagefolder:{root}",
                                         skipped=int(z["skipped"]))
        except Exception:
            warnings.warn(f"ignoring unreadable cache {cached}")
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        decoded = list(pool.map(lambda p: _decode(p, channels, img_size), files))
    bad = [f for f, d in zip(files, decoded) if d is None]
    if bad and on_corrupt == "fail":
        raise DatasetError(f"imagefolder: cannot decode {bad[0]}" +
                           (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "") +
                           "; set data.on_corrupt=skip to skip and count them")
    keep = [i for i, d in enumerate(decoded) if d is not None]
    if bad:
        warnings.warn(f"imagefolder: skipped {len(bad)} corrupt file(s) under {root}, first {bad[0]}")
    if not keep:
        raise DatasetError(f"imagefolder: none of the images under {root} could be decoded")
    shapes = {decoded[i].shape for i in keep}
    if len(shapes) > 1:
        first = {}
        for i in keep:
            first.setdefault(decoded[i].shape, files[i])
        desc = ", ".join(f"{s[1]}x{s[0]} (e.g. {p})" for s, p in list(first.items())[:3])
        raise DatasetError(f"imagefolder: {root} mixes image sizes: {desc}; set data.img_size to resize")
    images = np.stack([decoded[i] for i in keep])
    lab = np.asarray([labels[i] for i in keep], dtype=np.int64)
    if use_cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp.npz")
            np.savez(tmp, images=images, labels=lab, skipped=len(bad))
            os.replace(tmp, cached)
        except OSError as e:
            warnings.warn(f"could not write cache {cached}: {e}")
    return ImageArrayDataset(images, lab, classes, name=f"imagefolder:{root}", skipped=len(bad))
