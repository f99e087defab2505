"""The contract every image source keeps (:class:`ImageSource`) and its in-memory form, uint8
arrays (:class:`ImageArrayDataset`); sources read per image are
:class:`~sslkd.data.folder.LazyImages`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sslkd.errors import DatasetError


class NoHeldOutSplitError(DatasetError):
    """The data has no test split (only training images): accuracy cannot be measured on it."""


class ImageSource(Protocol):
    """What the engine, the evaluations and the commands may ask of any source: its length, items
    ``(uint8 [C, H, W], label)``, labels (``-1``: unlabelled), class names, channels, nominal
    size, normalisation, the files skipped while loading and a subset by indices. How its images
    become views is :mod:`sslkd.data.views`' business, not theirs."""

    labels: np.ndarray
    classes: list[str]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...

    @property
    def num_channels(self) -> int: ...

    @property
    def img_size(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    def subset(self, indices: np.ndarray) -> ImageSource: ...

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image as one uint8 ``[N, C, H, W]`` tensor and the labels: in-memory sources only
        (a source read per image raises :class:`DatasetError`)."""
        ...


@dataclass
class ImageArrayDataset(Dataset):
    """Images as a uint8 array ``[N, H, W, C]`` with integer labels ``[N]``.

    Items are ``(image uint8 [C, H, W] tensor, label int)``. Holding decoded uint8 pixels in
    memory is what small-image SSL wants: 50k CIFAR images are 150 MB and decoding is paid once.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str = "dataset"
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    skipped: int = 0  # corrupt files skipped while loading (on_corrupt="skip")

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DatasetError(
                f"{self.name}: expected uint8 images [N, H, W, C], got {self.images.dtype} {self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.images) == 0:
            raise DatasetError(f"{self.name}: no images")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not self.mean:
            self.mean, self.std = channel_stats(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(self.images[index]).permute(2, 0, 1)
        return img, int(self.labels[index])

    @property
    def num_channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def img_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: np.ndarray) -> ImageArrayDataset:
        """The images at ``indices``, with this set's classes and normalisation."""
        return replace(self, images=self.images[indices], labels=self.labels[indices])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as one uint8 ``[N, C, H, W]`` tensor (a view, no copy) and labels."""
        return torch.from_numpy(self.images).permute(0, 3, 1, 2), torch.from_numpy(self.labels)


def channel_stats(images: np.ndarray, max_images: int = 10000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] of (at most ``max_images`` evenly spaced) images, in two
    passes over chunks: memory stays at one chunk of float64, whatever the image size."""
    sample = images[:: max(1, len(images) // max_images)]
    c, n = images.shape[-1], sample[..., 0].size

    def chunks():
        for i in range(0, len(sample), 256):
            yield sample[i : i + 256].reshape(-1, c).astype(np.float64) / 255.0

    mean = sum(x.sum(0) for x in chunks()) / n
    std = np.sqrt(sum(((x - mean) ** 2).sum(0) for x in chunks()) / n).clip(min=1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``[N, H, W, C]`` to ``size x size`` (bilinear, antialiased), in chunks."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i in range(0, len(images), 4096):
        x = torch.from_numpy(images[i : i + 4096]).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + 4096] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced random ``fraction`` of the samples (at least 1 per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"subset_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = max(1, int(round(len(idx) * fraction)))
        keep.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(keep))
