"""CIFAR-10/100 in the official python-pickle archive layout.

The pickles are read with a restricted unpickler that only rebuilds plain containers and numpy
arrays, so a tampered archive cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from sslkd.data.base import DatasetError, ImageArrayDataset
from sslkd.data.download import download, extract_tar

ARCHIVES = {
    "cifar10": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        meta="batches.meta",
        names=b"label_names",
        labels=b"labels",
    ),
    "cifar100": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=["train"],
        test=["test"],
        meta="meta",
        names=b"fine_label_names",
        labels=b"fine_labels",
    ),
}
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"missing file {path} (expected the CIFAR python-pickle layout)")
    try:
        return _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as e:  # truncated or corrupt: name the file
        raise DatasetError(f"{path}: corrupt or truncated CIFAR pickle ({type(e).__name__}: {e})") from e


def load_cifar(name: str, split: str, root: str | Path | None, download_ok: bool = False) -> ImageArrayDataset:
    spec = ARCHIVES[name]
    if root is None:
        root = Path.home() / ".cache" / "sslkd" / name
        if not download_ok and not (root / spec["folder"]).is_dir():
            raise DatasetError(
                f"{name}: no root given and no copy in {root}; pass --root DIR "
                f"(containing {spec['folder']}/), or pretrain with data.download: true"
            )
    root = Path(root)
    folder = root if (root / spec["meta"]).is_file() else root / spec["folder"]
    if download_ok and not (folder / spec["meta"]).is_file():
        archive = download(spec["url"], root / Path(spec["url"]).name, spec["md5"])
        extract_tar(archive, root)
        folder = root / spec["folder"]
    if not folder.is_dir():
        raise DatasetError(
            f"{name}: {folder} does not exist (expected the python-pickle files "
            f"{', '.join(spec['train'] + spec['test'])}, {spec['meta']})"
        )
    meta = _load_pickle(folder / spec["meta"])
    classes = [c.decode() for c in meta[spec["names"]]]
    images, labels = [], []
    for fname in spec[split]:
        batch = _load_pickle(folder / fname)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            lab = np.asarray(batch[spec["labels"]], dtype=np.int64)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        except (KeyError, ValueError) as e:
            raise DatasetError(
                f"{folder / fname}: unexpected content ({e}); expected b'data' [N, 3072] uint8 and {spec['labels']!r}"
            ) from e
        labels.append(lab)
    mean, std = MEAN_STD[name]
    return ImageArrayDataset(
        np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), classes, name=name, mean=mean, std=std
    )
