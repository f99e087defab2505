"""Datasets (uint8 images + integer labels, by name) and self-supervised augmentations."""

from sslkd.data.base import DatasetError, ImageArrayDataset, NoHeldOutSplitError
from sslkd.data.folder import ImageFolderDataset, view_tensors
from sslkd.data.registry import DATASETS, get_dataset, held_out

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageArrayDataset",
    "ImageFolderDataset",
    "NoHeldOutSplitError",
    "get_dataset",
    "held_out",
    "view_tensors",
]
