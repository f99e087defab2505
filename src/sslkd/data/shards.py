"""A collection packed as WebDataset tar shards (``sslkd data pack``), read by random access.

The folder holds ``{split}-NNNNNN.tar`` shards (plain POSIX tar in WebDataset's layout:
``KEY.jpg`` + ``KEY.cls``, readable by ``tar``, ``webdataset``, ``wids``, timm's ``wds/``
reader), ``_info.json`` (timm's shard info: the file names and sample counts of each split, plus
an ``sslkd`` section with the classes, channels, formats and files skipped when packing) and
``{split}.index.npy``: where each image's bytes lie (shard, byte offset, size) and its label.

Reading by offset (one ``pread`` per image) makes a shard set a map-style dataset like a folder:
the seeded sampler, exact mid-epoch resume and the corrupt-file rules work unchanged, and the
training sampler reads shard by shard (:class:`~sslkd.data.augment.SeededEpochSampler` with
``groups``). The index is memory-mapped: 32 bytes an image in the page cache, shared by every
loader worker and every process of a node, not copied into each.
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from sslkd.data.base import DatasetError, NoHeldOutSplitError
from sslkd.data.folder import UNREADABLE, CorruptImageError, LazyImages, decode

INFO = "_info.json"
FORMAT_VERSION = 1
INDEX_DTYPE = np.dtype([("shard", "<i4"), ("key", "<i8"), ("offset", "<i8"), ("size", "<i8"), ("label", "<i4")])
OPEN_FILES = 32  # shard files a process keeps open (training reads one or two at a time; evaluation any)
HELD_OUT_SPLIT = "val"  # the split name of a packed val/ or test/ folder


def is_shards(root: Path) -> bool:
    """Whether ``root`` holds shards written by ``sslkd data pack`` (or being written)."""
    return (root / INFO).is_file() or (root / "_pack.json").is_file()


def read_info(root: str | Path) -> dict:
    """``_info.json`` of a packed folder, checked; a clear error for a folder that is not one."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"shards: {root} does not exist or is not a folder")
    path = root / INFO
    if not path.is_file():
        if (root / "_pack.json").is_file():
            raise DatasetError(f"shards: packing {root} was interrupted; the same `sslkd data pack` finishes it")
        raise DatasetError(f"shards: {root} has no {INFO}; `sslkd data pack FOLDER --out {root}` writes shards there")
    try:
        info = json.loads(path.read_text())
        version = info["sslkd"]["format"]
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"shards: {path} is not an sslkd shard description ({e!r})") from None
    if version > FORMAT_VERSION:
        raise DatasetError(f"shards: {root} has format {version}; this sslkd reads up to {FORMAT_VERSION}: upgrade it")
    return info


class ShardDataset(LazyImages):
    """The images of one split of a packed folder, decoded per item (see :class:`LazyImages`).

    ``shard_of`` (per item, non-decreasing) lets the training sampler read shard by shard."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        img_size: int = 224,
        rows: np.ndarray | None = None,
        info: dict | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.info = info or read_info(self.root)
        if split not in self.info["splits"]:
            raise DatasetError(f"shards: {self.root} has no split '{split}' (it has {', '.join(self.info['splits'])})")
        self.split = split
        self.files = list(self.info["splits"][split]["filenames"])
        self.index = np.load(self.root / f"{split}.index.npy", mmap_mode="r")
        if self.index.dtype != INDEX_DTYPE:
            raise DatasetError(f"shards: {self.root / f'{split}.index.npy'} has fields {self.index.dtype}")
        self.rows = np.arange(len(self.index)) if rows is None else np.asarray(rows, dtype=np.int64)
        meta = self.info["sslkd"]
        labels = self.index["label"][self.rows] if meta["classes"] else np.full(len(self.rows), -1)
        self._init(labels, meta["classes"], int(meta["channels"]), img_size, f"shards:{self.root}/{split}")
        self.shard_of = np.asarray(self.index["shard"][self.rows], dtype=np.int64)
        self._fds: OrderedDict[tuple[int, int], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:  # a spawned worker maps the index itself and opens its own files
        return {**self.__dict__, "index": None, "_fds": OrderedDict()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.index = np.load(self.root / f"{self.split}.index.npy", mmap_mode="r")

    def _fd(self, shard: int) -> int:
        key = (os.getpid(), shard)  # a forked worker must not use its parent's cache of descriptors
        fd = self._fds.pop(key, None)
        if fd is None:
            fd = os.open(self.root / self.files[shard], os.O_RDONLY)
            while len(self._fds) >= OPEN_FILES:
                self._close(*self._fds.popitem(last=False))
        self._fds[key] = fd
        return fd

    @staticmethod
    def _close(key: tuple[int, int], fd: int) -> None:
        if key[0] == os.getpid():  # a forked worker's inherited descriptors are its parent's to close
            os.close(fd)

    def close(self) -> None:
        """Close the shard files this process opened."""
        fds = self.__dict__.get("_fds") or {}  # also for an object whose __init__ failed
        while fds:
            self._close(*fds.popitem())

    def __del__(self) -> None:
        self.close()

    def read(self, i: int) -> tuple[bytes, str]:
        """The stored bytes of item ``i`` and its name for messages (``shard.tar:key``)."""
        shard, key, offset, size, _ = self.index[self.rows[i]]
        name = f"{self.root / self.files[shard]}:{key:08d}"
        data = os.pread(self._fd(int(shard)), int(size), int(offset))
        return data, name

    def prefetch(self, indices) -> None:
        """Announce the reads of a batch (``posix_fadvise WILLNEED`` on each image's bytes): the
        kernel fetches them concurrently, then each ``read`` finds them in the page cache (cold
        reads ~1.9x faster here; more where each request has latency, on network file systems)."""
        for i in indices:
            shard, _, offset, size, _ = self.index[self.rows[i]]
            os.posix_fadvise(self._fd(int(shard)), int(offset), int(size), os.POSIX_FADV_WILLNEED)

    def image(self, i: int, draft: int | None = None) -> Image.Image:
        data, name = self.read(i)
        return decode(io.BytesIO(data), self.channels, draft, name=name)

    def header_size(self, i: int) -> tuple[int, int]:
        """(width, height) of item ``i`` from its header (no decoding); raises
        :class:`CorruptImageError` naming the shard and member."""
        data, name = self.read(i)
        try:
            with Image.open(io.BytesIO(data)) as im:
                return im.size
        except UNREADABLE as e:
            raise CorruptImageError(f"cannot read the header of {name}: {e}") from None

    def subset(self, indices: np.ndarray) -> ShardDataset:
        out = ShardDataset(self.root, self.split, self.img_size, self.rows[np.asarray(indices)], self.info)
        out.draft = self.draft
        return out


def load_shards(root: str | Path, split: str = "train", img_size: int | None = None, verbose: bool = False):
    """``train`` or ``test`` (the packed held-out split) of the shards at ``root``."""
    info = read_info(root)
    name = "train" if split == "train" else HELD_OUT_SPLIT
    if name not in info["splits"]:
        raise NoHeldOutSplitError(
            f"shards: {root} has no held-out split (its source had no val/ or test/ folder); "
            f"accuracy needs images the model was not fitted on"
        )
    ds = ShardDataset(root, name, img_size or 224, info=info)
    if verbose:
        s = info["splits"][name]
        print(
            f"shards {root}: {len(ds)} images in {len(s['filenames'])} shards, "
            f"{len(ds.classes) or 'no'} classes, read lazily"
        )
    return ds
