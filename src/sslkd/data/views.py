"""How a source's images reach a model, chosen here once per source so that the engine, feature
extraction and fine-tuning never ask which kind of source they read.

- **In memory** (:class:`~sslkd.data.base.ImageArrayDataset`): whole uint8 batches are sliced and
  cropped, coloured and normalised on the device (or per image in the loader workers).
- **Read from files or rows** (:class:`~sslkd.data.folder.LazyImages`: folders, shards, Hugging
  Face datasets): each image is decoded and cropped in a loader worker at its own size (crops keep
  the photo's aspect ratio); an undecodable image is replaced and reported (training), dropped and
  reported (evaluation) or replaced by the next (fine-tuning).
- **Read in order** (:class:`~sslkd.data.stream.ImageStream`: a streamed Hugging Face dataset):
  as read from files, one epoch of the stream at a time (training only; an undecodable row is
  passed over and reported).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sslkd.data.augment import MultiCropDataset, MultiCropTransform, RawDataset
from sslkd.data.base import DatasetError
from sslkd.data.batch_augment import BatchMultiCrop
from sslkd.data.folder import CorruptImageError, EvalCrops, LazyImages, TrainCrops
from sslkd.data.pil_augment import PILMultiCrop
from sslkd.data.stream import ImageStream, StreamEpoch


def reads_files(dataset) -> bool:
    """Whether ``dataset`` decodes each image when asked (from a file, a shard, a table row)."""
    return isinstance(dataset, LazyImages)


def normalize_batch(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], size: int | None = None
) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float normalised (and resized to ``size``)."""
    x = x.float().div_(255)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def eval_batches(
    dataset, size: int, indices: np.ndarray | None = None, batch_size: int = 256, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """``(uint8 [B, C, h, w], labels [B], errors)`` of the images at ``indices`` (all: None), in
    order: slices of an in-memory set at its own size (the caller resizes to ``size`` when it
    normalises), or the evaluation view of images read from files (shorter side to
    ``size * 256/224``, centre crop; ``workers`` loader processes), where an undecodable image is a
    black one with its message in ``errors`` (the caller drops it). Memory holds one batch."""
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    if reads_files(dataset):
        view = EvalCrops(dataset, size, indices)
        loader = DataLoader(view, batch_size=batch_size, num_workers=workers, prefetch_factor=2 if workers else None)
        for x, y, errors in loader:
            yield x, y, list(errors)
        return
    images, labels = dataset.tensors()
    for i in range(0, len(indices), batch_size):
        idx = torch.as_tensor(indices[i : i + batch_size])
        yield images[idx], labels[idx], [""] * len(idx)


def view_tensors(dataset, indices, size: int) -> torch.Tensor:
    """uint8 ``[n, C, *, *]`` of the images at ``indices`` (for attention maps and other per-image
    figures); an image that cannot be decoded is an error naming it."""
    indices = np.asarray(list(indices), dtype=np.int64)
    if not len(indices):
        return torch.zeros(0, dataset.num_channels, size, size, dtype=torch.uint8)
    x, _, errors = next(eval_batches(dataset, size, indices, batch_size=len(indices)))
    if any(errors):
        raise CorruptImageError(next(e for e in errors if e))
    return x


def supervised_batches(
    dataset, order: torch.Tensor, batch_size: int, crops: BatchMultiCrop, key: int, device, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fine-tuning's training batches: the images of ``order`` in that order, whole batches,
    each a random resized crop (``crops``' global size and scale) and flip, normalised on
    ``device``, with labels; batch ``i``'s draws come from ``key + i``. From files the crops are
    cut per image by ``workers`` loader processes (an undecodable image replaced by the next)."""
    labels = torch.as_tensor(dataset.labels)
    if reads_files(dataset):
        r = crops.recipe
        view = TrainCrops(dataset, r.global_size, r.global_scale, order.numpy())
        for i, (x, y) in enumerate(DataLoader(view, batch_size, drop_last=True, num_workers=workers)):
            yield crops.colour([x.to(device)], key + i)[0], y.to(device)
        return
    images = dataset.tensors()[0]
    for i in range(len(order) // batch_size):
        idx = order[i * batch_size : (i + 1) * batch_size]
        yield crops(images[idx].to(device), key + i)[0], labels[idx].to(device)


class TrainViews:
    """The self-supervised training views of ``dataset`` from ``transform``'s recipe: per image in
    the loader workers (torchvision on in-memory images, PIL's C code on images read from files),
    or with ``on_device`` as whole batches on the device (images read from files: cropped by the
    workers, coloured on the device). Items come from :meth:`items`; :meth:`to_device` turns a
    loader batch into the list of normalised views."""

    def __init__(self, dataset, transform: MultiCropTransform, on_device: bool) -> None:
        self.dataset, self.transform = dataset, transform
        self.batch_aug = BatchMultiCrop.from_transform(transform) if on_device else None
        self.reports_bad = reads_files(dataset)  # only images decoded while training can fail
        self.whole = on_device and not self.reports_bad  # whole uint8 images to the device
        self.worker_aug = transform
        if not self.reports_bad:
            return
        r = transform.recipe
        if r.paired and on_device:
            raise DatasetError(
                "paired views (DMT) of images read lazily are made in the loader workers: set data.augment_on=loader"
            )
        if not r.paired:
            self.worker_aug = PILMultiCrop.from_transform(transform, crop_only=on_device)
        # JPEGs decode at 1/2-1/8 scale while the smallest crop (global or local, at the narrowest
        # aspect ratio 3:4) keeps at least its output pixels
        need = [r.global_size / math.sqrt(min(r.global_scale))]
        if r.local_number:
            need.append(r.local_size / math.sqrt(min(r.local_scale)))
        dataset.draft = math.ceil(max(need) / math.sqrt(3 / 4))

    def items(self) -> Dataset:
        """The loader's dataset: item ``(index, seed)`` -> ``(views or image, label, seed, bad)``."""
        return RawDataset(self.dataset) if self.whole else MultiCropDataset(self.dataset, self.worker_aug)

    def stream_items(
        self, seed: int, epoch: int, rank: int, world: int, batch: int, start: int, workers: int
    ) -> StreamEpoch | None:
        """A stream's items of one epoch for process ``rank`` from its batch ``start`` on, with at most
        ``workers`` loader workers: the most that share its parts out evenly (the loader takes a
        batch from each worker in turn, so a worker with fewer rows repeats some, one with more
        leaves some to the next epoch); None for an indexed source (:meth:`items`, drawn by a sampler)."""
        if not isinstance(self.dataset, ImageStream):
            return None
        parts = self.dataset.shards(world)
        workers = max(w for w in range(1, max(1, min(workers, parts)) + 1) if parts % w == 0)
        return StreamEpoch(self.dataset, self.worker_aug, seed, epoch, rank, world, batch, start, workers)

    def to_device(self, item, device: torch.device) -> list[torch.Tensor]:
        """A loader batch -> the normalised views on ``device``, keyed by its first image's seed
        (a resumed run draws the same views)."""
        if self.batch_aug is None:
            views = item[0]
            if views[0].dtype == torch.uint8:  # the workers' PIL crops: normalised here, on the device
                mean, std = self.dataset.mean, self.dataset.std
                views = [normalize_batch(v.to(device, non_blocking=True), mean, std) for v in views]
            return views
        if not self.whole:  # cropped per photo by the workers, coloured as a batch here
            crops = [v.to(device, non_blocking=True) for v in item[0]]
            return self.batch_aug.colour(crops, int(item[2][0]) % 2**62)
        images, _, seeds, _ = item
        return self.batch_aug(images.to(device, non_blocking=True), int(seeds[0]) % 2**62)
