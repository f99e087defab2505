"""Downsampled ImageNet (32x32, 64x64) in its npz batch layout (Chrabaszcz et al. 2017).

``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` and ``val_data.npz``, each with
``data`` [N, 3*S*S] (channel-planar uint8) and ``labels`` 1..1000.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from sslkd.data.base import DatasetError, ImageArrayDataset, balanced_subset
from sslkd.data.folder import IMAGENET_MEAN_STD


def load_imagenet32(
    split: str, root: str | Path | None, subset_fraction: float = 1.0, seed: int = 0
) -> ImageArrayDataset:
    if root is None:
        raise DatasetError(
            "imagenet32: pass --root DIR holding train_data_batch_*.npz and val_data.npz "
            "(from image-net.org, 'Downsampled ImageNet 32x32')"
        )
    root = Path(root)
    files = (
        sorted(root.glob("train_data_batch_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        if split == "train"
        else [root / "val_data.npz"]
    )
    if not files or not files[0].is_file():
        raise DatasetError(
            f"imagenet32: no {'train_data_batch_*.npz' if split == 'train' else 'val_data.npz'} in {root}"
        )
    images, labels = [], []
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as z:
                data, lab = np.asarray(z["data"], dtype=np.uint8), np.asarray(z["labels"], dtype=np.int64)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DatasetError(f"{path}: corrupt or truncated npz, or missing 'data'/'labels' ({e})") from e
        side = int(round((data.shape[1] / 3) ** 0.5))
        if data.ndim != 2 or 3 * side * side != data.shape[1] or len(data) != len(lab):
            raise DatasetError(f"{path}: expected data [N, 3*S*S] and labels [N], got {data.shape}, {lab.shape}")
        lab = lab - 1  # files use 1..1000
        if subset_fraction < 1:  # per batch file keeps memory bounded; balanced per class
            keep = balanced_subset(lab, subset_fraction, seed + len(images))
            data, lab = data[keep], lab[keep]
        images.append(data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1))
        labels.append(lab)
    lab = np.concatenate(labels)
    classes = [f"n{c:04d}" for c in range(int(lab.max()) + 1)]
    mean, std = IMAGENET_MEAN_STD
    return ImageArrayDataset(
        np.ascontiguousarray(np.concatenate(images)), lab, classes, name="imagenet32", mean=mean, std=std
    )
