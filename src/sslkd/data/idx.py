"""Fashion-MNIST (and MNIST-style) IDX files, gzipped or not."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from sslkd.data.base import DatasetError, ImageArrayDataset
from sslkd.data.download import download

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {  # upstream md5 of the .gz files (Debian re-gzipped its copies: sums differ there)
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (uint8 payload) into an array; truncation is an error naming the file."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an IDX file of uint8 (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DatasetError(
            f"{path}: truncated or corrupt IDX file ({len(raw)} bytes, expected {expected} for shape {dims})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for cand in (root / stem, root / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def load_fashion_mnist(split: str, root: str | Path | None, download_ok: bool = False) -> ImageArrayDataset:
    prefix = "train" if split == "train" else "t10k"
    if root is None:
        root = DEBIAN_ROOT if DEBIAN_ROOT.is_dir() else Path.home() / ".cache" / "sslkd" / "fashion-mnist"
    root = Path(root)
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem = f"{prefix}-{kind}"
        path = _find(root, stem)
        if path is None and download_ok:
            path = download(URL + stem + ".gz", root / f"{stem}.gz", FILES[stem])
        if path is None:
            raise DatasetError(
                f"fashion-mnist: {root / stem}[.gz] not found (install Debian's "
                f"dataset-fashion-mnist, pass --root DIR, or pretrain with data.download: true)"
            )
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{paths[0]} / {paths[1]}: shapes {images.shape} and {labels.shape} do not match")
    return ImageArrayDataset(
        np.ascontiguousarray(images[..., None]),
        labels.astype(np.int64),
        CLASSES,
        name="fashion-mnist",
        mean=(0.2860,),
        std=(0.3530,),
    )
