"""Datasets (uint8 images + integer labels, by name) and self-supervised augmentations."""

from sslkd.data.base import DatasetError, ImageArrayDataset
from sslkd.data.registry import DATASETS, get_dataset

__all__ = ["DATASETS", "DatasetError", "ImageArrayDataset", "get_dataset"]
