"""Datasets (uint8 images + integer labels, by name) and self-supervised augmentations."""

from sslkd.data.base import DatasetError, ImageArrayDataset, ImageSource, NoHeldOutSplitError
from sslkd.data.folder import ImageFolderDataset
from sslkd.data.registry import DATASETS, get_dataset, held_out, labelled
from sslkd.data.views import view_tensors

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageArrayDataset",
    "ImageFolderDataset",
    "ImageSource",
    "NoHeldOutSplitError",
    "get_dataset",
    "held_out",
    "labelled",
    "view_tensors",
]
