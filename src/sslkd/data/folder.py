"""Folders of image files read lazily: a cached file index, decoding per item in the loader workers.

:func:`scan_folder` walks a tree once (``os.scandir``: no ``stat`` per file, so a million paths
take seconds) and caches the index under ``$SSLKD_CACHE``; the cache is reused while no folder of
the tree has changed (a folder's mtime changes when a file is added, removed or renamed in it).
:class:`ImageFolderDataset` keeps the paths as one byte buffer plus offsets (not a list of Python
strings, whose reference counts would copy-on-write the list into every forked worker) and decodes
one image per item at its **original** size, so that crops keep the photo's aspect ratio.

Labels come from class folders only when the layout is unambiguous (``labels="auto"``): at least
two top-level folders, no image loose in the root, every image at the same depth (ImageNet's
``class/image``). Otherwise (a flat folder, albums nested unevenly, loose images beside folders)
the set is unlabelled: fine for pretraining, refused by evaluations; ``labels="folders"`` takes
the top-level folders as classes whatever lies below them (torchvision's ``ImageFolder``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from sslkd.data.base import DatasetError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# one-channel images: the luma of ImageNet's statistics (ITU-R 601-2 weights)
GRAY_MEAN_STD = ((0.4490,), (0.2260,))
MAX_PIXELS = 800_000_000  # data.max_pixels' default: very large scans are photos too (PIL stops at 179 Mpx)
# PIL's own failure types for a file it cannot read, a header declaring too many pixels among them
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def set_max_pixels(limit: int) -> None:
    """Refuse images declaring more than ``limit`` pixels (``data.max_pixels``), as corrupt files:
    a header can declare 60000x60000 pixels in a few bytes. Kept in the environment too, so that
    loader workers started by spawn or forkserver (which import this module anew) keep it."""
    Image.MAX_IMAGE_PIXELS = limit // 2  # PIL: a warning above this, an error above twice this
    os.environ["SSLKD_MAX_PIXELS"] = str(limit)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


set_max_pixels(int(os.environ.get("SSLKD_MAX_PIXELS", MAX_PIXELS)))
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is corrupt, not silently grey


class CorruptImageError(DatasetError):
    """An image file that cannot be decoded (corrupt, truncated, deleted, not an image)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SSLKD_CACHE", Path.home() / ".cache" / "sslkd"))


@dataclass
class FolderIndex:
    """Relative image paths (sorted, ``/``-separated), labels (``-1``: unlabelled), class names
    and the count of non-image files ignored."""

    root: Path
    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    ignored: int = 0
    ignored_example: str = ""


def walk_images(root: Path) -> tuple[list[str], list[tuple[str, int]], int, str]:
    """Image paths below ``root``, every folder's mtime, the count of entries not indexed (other
    files, a folder seen before through a link: a loop, an unreadable folder) and an example."""
    paths, dirs, ignored, example = [], [], 0, ""
    stack, seen = [""], set()
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else str(root)
        try:
            st = os.stat(full)
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or a second link to a folder
                raise OSError(f"{shown(full)} was indexed already (a link loop?)")
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(full) as it:
                entries = [(e.name, e.is_dir()) for e in it if not e.name.startswith(".")]
        except OSError as e:
            if not rel:
                raise DatasetError(f"imagefolder: cannot read {shown(full)}: {e}") from None
            ignored += 1
            example = example or f"{full} ({e.strerror or e})"
            continue
        dirs.append((rel, st.st_mtime_ns))
        files, subdirs = [], []
        for name, is_dir in entries:
            if is_dir:
                subdirs.append(f"{rel}/{name}" if rel else name)
            elif os.path.splitext(name)[1].lower() in EXTENSIONS:
                files.append(f"{rel}/{name}" if rel else name)
            else:
                ignored += 1
                example = example or os.path.join(full, name)
        paths += sorted(files)
        stack += sorted(subdirs, reverse=True)  # depth first, in name order
    return paths, dirs, ignored, example


def _labels(paths: list[str], mode: str, root: Path, classes: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    tops = [p.split("/", 1)[0] if "/" in p else None for p in paths]
    if classes is not None:  # a held-out split: the training split's classes, looked up by folder name
        lookup = {c: i for i, c in enumerate(classes)}
        unknown = sorted({t for t in tops if t is not None and t not in lookup})
        loose = None in tops
        if unknown or loose:
            where = [f"folders {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"] if unknown else []
            raise DatasetError(
                f"imagefolder: {root} has images outside the training classes "
                f"({'; '.join(where + (['images loose in the folder'] if loose else []))}); "
                f"a held-out split needs <class>/<image> with the training classes"
            )
        return np.asarray([lookup[t] for t in tops], dtype=np.int64), list(classes)
    depths = {p.count("/") for p in paths}
    if mode == "none" or (mode == "auto" and (None in tops or len(set(tops)) < 2 or len(depths) > 1)):
        return np.full(len(paths), -1, dtype=np.int64), []
    if mode == "folders" and any(t is None for t in tops):
        loose = next(p for p, t in zip(paths, tops) if t is None)
        raise DatasetError(f"imagefolder: data.labels=folders but {root / loose} is not in a class folder")
    classes = sorted(set(tops))  # type: ignore[arg-type]
    lookup = {c: i for i, c in enumerate(classes)}
    return np.asarray([lookup[t] for t in tops], dtype=np.int64), classes


def scan_folder(
    root: str | Path, labels: str = "auto", use_cache: bool = True, classes: list[str] | None = None
) -> FolderIndex:
    """Index every image file below ``root`` (recursively; hidden files and folders skipped).

    ``labels``: ``auto`` (class folders when the layout is unambiguous), ``folders`` (the first
    folder level is the class, always), ``none``. ``classes``: the training split's class names,
    which a held-out split's folders must use (its labels are their indices)."""
    root = Path(root)
    if labels not in ("auto", "folders", "none"):
        raise DatasetError(f"data.labels must be auto, folders or none, got '{labels}'")
    if not root.is_dir():
        raise DatasetError(f"imagefolder: {root} does not exist or is not a folder")
    key = hashlib.sha1(os.fsencode(root.resolve())).hexdigest()[:16]
    cached = cache_dir() / f"index-v2-{key}.npz"  # v2: NUL-separated file-system bytes
    paths = None
    if use_cache and cached.is_file():
        try:
            with np.load(cached) as z:
                dirs = _unpack_names(z["dirs"])
                mtimes = z["mtimes"]
                if all(os.stat(root / d).st_mtime_ns == int(m) for d, m in zip(dirs, mtimes)):
                    paths = _unpack_names(z["paths"]) if z["paths"].size else []
                    ignored, example = int(z["ignored"]), str(z["example"])
        except (OSError, ValueError, KeyError):
            paths = None  # a folder vanished or the cache is unreadable: scan again
    if paths is None:
        paths, dirs_m, ignored, example = walk_images(root)
        if use_cache:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(cached.stem + f".{os.getpid()}.tmp.npz")
                np.savez(
                    tmp,
                    paths=_pack_names(paths),
                    dirs=_pack_names([d for d, _ in dirs_m]),
                    mtimes=np.asarray([m for _, m in dirs_m], np.int64),
                    ignored=ignored,
                    example=example,
                )
                os.replace(tmp, cached)
            except OSError as e:
                warnings.warn(f"could not write the file index cache {cached}: {e}", stacklevel=2)
    if not paths:
        raise DatasetError(f"imagefolder: no image files ({', '.join(sorted(EXTENSIONS))}) under {root}")
    lab, found = _labels(paths, labels, root, classes)
    return FolderIndex(root, paths, lab, found, ignored, example)


def _pack_names(names: list[str]) -> np.ndarray:
    """File names as one byte array, NUL-separated (the one byte no file name holds), each in the
    file system's own bytes (``os.fsencode``: non-UTF-8 names round-trip)."""
    return np.frombuffer(b"\0".join(os.fsencode(n) for n in names), np.uint8)


def _unpack_names(packed: np.ndarray) -> list[str]:
    return [os.fsdecode(n) for n in bytes(packed).split(b"\0")]


def shown(name: str) -> str:
    """``name`` fit for a one-line message: control characters and undecodable bytes escaped."""
    return name if name.isprintable() else repr(name)[1:-1]


def decode(path: str | Path | BinaryIO, channels: int, draft: int | None = None, name: str = "") -> Image.Image:
    """Open ``path`` (a file name or a binary stream called ``name`` in messages) as an 8-bit
    ``RGB`` (``channels=3``) or ``L`` image, EXIF orientation applied.

    ``draft``: JPEGs may decode at 1/2, 1/4 or 1/8 scale as long as both sides stay >= ``draft``
    (libjpeg's DCT scaling: a 4000 px photo for 224 px crops decodes ~10x faster). Palette and
    alpha images are composited on white; 16-bit and 32-bit images are scaled to 8 bits.
    Raises :class:`CorruptImageError` naming the file."""
    mode = "RGB" if channels == 3 else "L"
    try:
        with Image.open(path) as im:
            if draft and im.format == "JPEG":
                im.draft(mode, (draft, draft))
            im = ImageOps.exif_transpose(im)
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float32)
                peak = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
                im = Image.fromarray((a.clip(0, peak) * (255.0 / peak) + 0.5).astype(np.uint8), "L")
            elif im.mode == "F":  # floats have no conventional range (0-1, 0-4095, ...): their own
                a = np.nan_to_num(np.asarray(im, dtype=np.float64))
                lo, span = a.min(), a.max() - a.min()
                im = Image.fromarray(((a - lo) * (255.0 / span if span else 0.0) + 0.5).astype(np.uint8), "L")
            if im.mode in ("P", "PA", "LA", "RGBA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            return im.convert(mode) if im.mode != mode else im
    except UNREADABLE as e:
        hint = "; raise data.max_pixels to read it" if isinstance(e, Image.DecompressionBombError) else ""
        raise CorruptImageError(f"cannot decode {shown(str(name or path))}: {e}{hint}") from None


def pil_to_uint8(im: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 tensor ``[C, H, W]`` (one copy)."""
    a = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(a.reshape(a.shape[0], a.shape[1], -1).copy()).permute(2, 0, 1)


def guess_channels(root: Path, paths: list[str], sample: int = 32) -> int:
    """1 when every sampled image is grayscale, else 3 (headers only, no decoding; an unreadable
    header is skipped: the loader meets the file under ``data.on_corrupt``)."""
    for i in np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int):
        try:
            with Image.open(root / paths[i]) as im:
                if im.mode not in ("L", "1", "I;16", "I;16B", "I;16L", "I", "F", "LA"):
                    return 3
        except UNREADABLE:
            continue
    return 1


class LazyImages(Dataset):
    """Images decoded per item from files (a folder, shards): ``(uint8 [C, H, W] at the image's
    own size, label)``. ``img_size`` is the nominal training size (crops are cut from the original
    image); ``draft`` lets JPEGs decode at reduced scale while both sides stay >= it. Subclasses
    give ``__len__``, ``image`` and ``subset``, and set the attributes of ``_init``."""

    lazy = True

    def _init(self, labels, classes, channels: int, img_size: int, name: str) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.channels, self.img_size, self.name = channels, img_size, name
        self.draft: int | None = img_size
        self.mean, self.std = IMAGENET_MEAN_STD if channels == 3 else GRAY_MEAN_STD
        self.skipped = 0
        self.ignored = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def image(self, i: int, draft: int | None = None) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return pil_to_uint8(self.image(i, self.draft)), int(self.labels[i])

    def prefetch(self, indices) -> None:
        """Announce a batch's reads (shards do; a folder reads each file when asked)."""

    def pil_item(self, i: int) -> tuple[Image.Image, int]:
        """``(PIL image, label)``: for augmentations that work on PIL images."""
        return self.image(i, self.draft), int(self.labels[i])

    @property
    def num_channels(self) -> int:
        return self.channels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def tensors(self):
        raise DatasetError(f"{self.name} is read lazily from files; it has no in-memory tensor of all images")


class ImageFolderDataset(LazyImages):
    """Image files of a :class:`FolderIndex`, decoded per item (see :class:`LazyImages`)."""

    def __init__(
        self,
        index: FolderIndex,
        channels: int | None = None,
        img_size: int = 224,
        name: str | None = None,
        subset: np.ndarray | None = None,
    ) -> None:
        paths, labels = index.paths, index.labels
        if subset is not None:
            paths, labels = [paths[i] for i in subset], labels[subset]
        self.root = str(index.root)
        encoded = [os.fsencode(p) for p in paths]  # any legal name: newlines, non-UTF-8 bytes
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        channels = channels or guess_channels(index.root, paths)
        self._init(labels, index.classes, channels, img_size, name or f"imagefolder:{index.root}")
        self.ignored = index.ignored

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(bytes(self._blob[self._offsets[i] : self._offsets[i + 1]])))

    def image(self, i: int, draft: int | None = None) -> Image.Image:
        return decode(self.path(i), self.channels, draft)

    def subset(self, indices: np.ndarray) -> ImageFolderDataset:
        """The dataset of the images at ``indices`` (a data.subset_fraction)."""
        index = FolderIndex(
            Path(self.root),
            [self.path(int(i))[len(self.root) + 1 :] for i in indices],
            self.labels[indices],
            self.classes,
            self.ignored,
        )
        out = ImageFolderDataset(index, self.channels, self.img_size, self.name)
        out.draft = self.draft
        return out


class EvalCrops(Dataset):
    """The standard evaluation view of a lazy dataset: resize the shorter side to ``size * 256 /
    224`` and centre-crop ``size`` (256 -> 224 at 224 px). Items ``(uint8 [C, size, size], label,
    error)``: a file that cannot be decoded gives a black image and its error message (the caller
    drops it and says so), so that one bad file does not end an evaluation of thousands."""

    def __init__(self, base: LazyImages, size: int, indices: np.ndarray | None = None) -> None:
        self.base, self.size = base, size
        self.resize = int(round(size * 256 / 224))
        self.indices = np.arange(len(base)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, js: list[int]) -> list:  # the DataLoader's batched fetch
        self.base.prefetch([int(self.indices[j]) for j in js])
        return [self[j] for j in js]

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int, str]:
        i = int(self.indices[j])
        try:
            im = self.base.image(i, draft=self.resize)
        except CorruptImageError as e:
            return torch.zeros(self.base.num_channels, self.size, self.size, dtype=torch.uint8), -1, str(e)
        w, h = im.size
        scale = self.resize / min(w, h)
        im = im.resize(
            (max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BICUBIC, reducing_gap=3.0
        )
        left, top = (im.size[0] - self.size) // 2, (im.size[1] - self.size) // 2
        return pil_to_uint8(im.crop((left, top, left + self.size, top + self.size))), int(self.base.labels[i]), ""


class TrainCrops(Dataset):
    """Supervised training view of a lazy dataset (fine-tuning): a random resized crop of the
    original image and a flip, as uint8 ``[C, size, size]``; an undecodable file is replaced by
    the next image (fine-tuning has no step count to keep exact)."""

    def __init__(self, base: LazyImages, size: int, scale: tuple[float, float], indices: np.ndarray) -> None:
        self.base, self.indices = base, np.asarray(indices)
        self.t = v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, js: list[int]) -> list:  # the DataLoader's batched fetch
        self.base.prefetch([int(self.indices[j]) for j in js])
        return [self[j] for j in js]

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int]:
        for k in range(len(self.indices)):
            i = int(self.indices[(j + k) % len(self.indices)])
            try:
                return self.t(self.base[i][0]), int(self.base.labels[i])
            except CorruptImageError as e:
                warnings.warn(f"fine-tuning: skipped {e}", stacklevel=2)
        raise DatasetError(f"{self.base.name}: no image could be decoded")
