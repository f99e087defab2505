"""Datasets by name: ``get_dataset(name, split, root, ...)`` -> :class:`ImageArrayDataset` (in
memory) or a :class:`~sslkd.data.folder.LazyImages` (decoded per item). A source with options of
its own registers their dataclass in :data:`OPTIONS` (``data.options``, typed by ``data.name``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sslkd.data.base import DatasetError, ImageArrayDataset, ImageSource, balanced_subset, resize_images
from sslkd.data.cifar import load_cifar
from sslkd.data.folder import set_max_pixels
from sslkd.data.hf import HFOptions, load_hf
from sslkd.data.hf_stream import load_hf_stream
from sslkd.data.idx import load_fashion_mnist
from sslkd.data.imagefolder import load_imagefolder
from sslkd.data.imagenet32 import load_imagenet32
from sslkd.data.shards import load_shards
from sslkd.data.toy import load_digits, make_synthetic
from sslkd.errors import ConfigError
from sslkd.schema import from_dict


def _cifar(name: str) -> Callable[..., ImageArrayDataset]:
    def load(split, root, download=False, **_):
        return load_cifar(name, split, root, download)

    return load


def _fashion(split, root, download=False, **_):
    return load_fashion_mnist(split, root, download)


def _imagefolder(split, root, img_size=None, on_corrupt="fail", **kw):
    if root is None:
        raise DatasetError("imagefolder: pass --root DIR (a folder of images, or root/train + root/val)")
    return load_imagefolder(
        root,
        split,
        img_size=img_size,
        on_corrupt=on_corrupt,
        channels=kw.get("channels"),
        in_memory=kw.get("in_memory"),
        labels=kw.get("labels", "auto"),
        verbose=kw.get("verbose", False),
        classes=kw.get("classes"),
    )


def _shards(split, root, img_size=None, **kw):
    if root is None:
        raise DatasetError("shards: set data.root to a folder written by `sslkd data pack`")
    if kw.get("in_memory"):
        raise DatasetError("shards are read lazily; data.in_memory applies to imagefolder")
    return load_shards(root, split, img_size, kw.get("verbose", False))


def _hf(split, root, img_size=None, on_corrupt="fail", **kw):
    options = kw.get("options") or HFOptions()
    read = dict(
        img_size=img_size,
        on_corrupt=on_corrupt,
        in_memory=kw.get("in_memory"),
        classes=kw.get("classes"),
        channels=kw.get("channels"),
        verbose=kw.get("verbose", False),
        labels=kw.get("labels", "auto"),
    )
    if not options.streaming:
        return load_hf(root, split, options, **read)
    if kw.get("stream") and kw.get("subset_fraction", 1.0) < 1:
        raise DatasetError(f"hf:{root}: a stream has no subsets (data.subset_fraction); set train.epochs or max_steps")
    return load_hf_stream(root, split, options, kw.get("stream", False), kw.get("seed", 0), **read)


def _imagenet32(split, root, subset_fraction=1.0, seed=0, **_):
    return load_imagenet32(split, root, subset_fraction, seed)


def _digits(split, root=None, img_size=None, **_):
    return load_digits(split, img_size or 16)


def _synthetic(split, root=None, img_size=None, seed=0, **kw):
    return make_synthetic(
        split, kw.get("num_samples"), kw.get("num_classes", 10), img_size or 32, kw.get("channels", 3), seed
    )


DATASETS: dict[str, Callable[..., ImageSource]] = {
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "fashion-mnist": _fashion,
    "imagefolder": _imagefolder,
    "shards": _shards,
    "hf": _hf,
    "imagenet32": _imagenet32,
    "digits": _digits,
    "synthetic": _synthetic,
}
OPTIONS: dict[str, type] = {"hf": HFOptions}  # data.options of the sources that take some
# loaders that resize or subsample by themselves
_SELF_RESIZING = {"imagefolder", "shards", "hf", "digits", "synthetic"}
_SELF_SUBSETTING = {"imagenet32"}


def get_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    img_size: int | None = None,
    subset_fraction: float = 1.0,
    seed: int = 0,
    on_corrupt: str = "fail",
    max_pixels: int | None = None,
    options: Any = None,
    **kwargs: Any,
) -> ImageSource:
    """Load dataset ``name`` (see :data:`DATASETS`) as uint8 images and integer labels.

    ``img_size`` resizes every image (a lazily read folder keeps each file's own size and takes
    it as its nominal training size); ``subset_fraction`` keeps a class-balanced seeded fraction.
    ``imagefolder`` also takes ``in_memory`` (None: automatic), ``labels`` (auto/folders/none)
    and, for a held-out split, ``classes`` and ``channels`` of the training split (:func:`held_out`).
    ``stream=True``: the caller (the training engine) reads a source that can only be read in
    order, an :class:`~sslkd.data.stream.ImageStream`, where the source is one (a streamed
    ``hf`` set); other callers get an indexed source.
    ``max_pixels``: images declaring more pixels are corrupt files (the process-wide limit, kept
    for the loader's workers; default :data:`~sslkd.data.folder.MAX_PIXELS`). ``options``: the
    source's own options (:data:`OPTIONS`; a dataclass, or a mapping checked against it).
    Errors (missing root, wrong checksum, truncated file, empty folder) raise
    :class:`DatasetError` naming the path; nothing falls back to another dataset.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; available: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got '{split}'")
    if max_pixels is not None:
        set_max_pixels(max_pixels)
    ds = DATASETS[name](
        split,
        root,
        options=source_options(name, options),
        download=download,
        img_size=img_size,
        seed=seed,
        subset_fraction=subset_fraction,
        on_corrupt=on_corrupt,
        **kwargs,
    )
    if getattr(ds, "lazy", False):  # read from files: crops are cut from each original image
        if subset_fraction < 1:
            ds = ds.subset(balanced_subset(ds.labels, subset_fraction, seed))
        return ds
    if img_size is not None and name not in _SELF_RESIZING and ds.img_size != img_size:
        ds = ImageArrayDataset(
            resize_images(ds.images, img_size), ds.labels, ds.classes, ds.name, ds.mean, ds.std, ds.skipped
        )
    if subset_fraction < 1 and name not in _SELF_SUBSETTING:
        keep = balanced_subset(ds.labels, subset_fraction, seed)
        ds = ImageArrayDataset(
            np.ascontiguousarray(ds.images[keep]), ds.labels[keep], ds.classes, ds.name, ds.mean, ds.std, ds.skipped
        )
    return ds


def held_out(name: str, train: ImageSource, **kwargs: Any) -> ImageSource:
    """The test split of dataset ``name``, read as ``train`` was: its classes (a folder's labels are
    looked up by class name), channels and way of reading."""
    kwargs.update(classes=train.classes, channels=train.num_channels, in_memory=not getattr(train, "lazy", False))
    return get_dataset(name, "test", **kwargs)


def labelled_splits(name: str, **kwargs: Any) -> tuple[ImageSource, ImageSource]:
    """``(train, test)`` for an evaluation: the training split and the held-out split read as it
    was (:func:`held_out`); a dataset without labels is an error."""
    train = get_dataset(name, "train", **kwargs)
    if not train.num_classes:
        raise DatasetError(
            f"{train.name} has no labels (no unambiguous class folders, no label column): kNN, linear and "
            f"fine-tuning need labelled images, e.g. root/train/<class>/<image> and root/val/<class>/<image>"
        )
    return labelled(train), labelled(held_out(name, train, **kwargs))


def labelled(ds: ImageSource) -> ImageSource:
    """``ds`` without its unlabelled images (label ``-1``: rows of a table without a class), said."""
    keep = np.flatnonzero(np.asarray(ds.labels) >= 0)
    if len(keep) == len(ds):
        return ds
    if not len(keep):
        raise DatasetError(f"{ds.name}: no image has a label")
    warnings.warn(f"{ds.name}: {len(ds) - len(keep)} unlabelled image(s) left out of the evaluation", stacklevel=2)
    return ds.subset(keep)


def source_options(name: str, options: Any) -> Any:
    """``data.options`` of source ``name`` as its dataclass (None: none given); a mapping is
    checked key by key, and a source without options refuses any."""
    cls = OPTIONS.get(name)
    if options is None or cls is None and not options:
        return options
    if cls is None:
        raise ConfigError(f"data.options: dataset '{name}' takes no options (those that do: {', '.join(OPTIONS)})")
    return options if isinstance(options, cls) else from_dict(cls, dict(options), "data.options")
