"""Sources read in order, without random access (streams), and one epoch of training items from
them.

A stream cannot keep the engine's seeded permutation (:class:`~sslkd.data.augment.SeededEpochSampler`
draws indices), so :class:`ImageStream` gives its rows in its own seeded order for an epoch and a
process, already split between the loader workers of that process (a worker reads its own shards),
and :class:`StreamEpoch` turns them into the same training items as an indexed source. An epoch is
``len(stream)`` images (its row count): every process delivers ``len // world // batch`` whole
batches, cycling its part of the stream if the count was stale, so that no process waits for
another's step.

A resumed epoch replays the stream: the loader takes batch ``i`` from worker ``i mod workers``, so
each worker drops, without decoding, the rows of the batches it had delivered, and the loader's
first ``start mod workers`` batches are dropped after it (exact when the processes and workers are
those of the interrupted run).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from sslkd.data.base import DatasetError
from sslkd.data.folder import CorruptImageError, LazyImages, decode, pil_to_uint8
from sslkd.data.pil_augment import PILMultiCrop

MAX_BAD_IN_A_ROW = 16  # undecodable rows in a row before the stream is declared unreadable


class ImageStream(LazyImages):
    """A source read in order (see the module docstring). Subclasses give ``__len__`` (the rows of
    an epoch), :meth:`rows` and :meth:`shards`, and :meth:`open` where a row's image is not bytes
    or a local path; labels come with the rows, so ``labels`` is empty and ``classes`` too: what
    needs labels (the training monitor, evaluations) reads an indexed part of the data instead."""

    def rows(self, epoch: int, rank: int, world: int) -> Iterator[tuple[Any, int, str]]:
        """``(encoded bytes or a path, label or -1, name)`` of process ``rank``'s part of epoch
        ``epoch``, in the stream's seeded order; inside a loader worker, only that worker's part."""
        raise NotImplementedError

    def shards(self, world: int) -> int:
        """How many parts one of ``world`` processes can split between its loader workers."""
        raise NotImplementedError

    def open(self, data: Any) -> Any:
        """A row's image as :func:`~sslkd.data.folder.decode` reads it (a file object or a path)."""
        return io.BytesIO(data) if isinstance(data, bytes) else data

    def image(self, i: int, draft: int | None = None):
        raise DatasetError(f"{self.name} is a stream: it is read in order, not image by image")

    def subset(self, indices: np.ndarray):
        raise DatasetError(
            f"{self.name} is a stream: it has no subsets (data.subset_fraction); set train.epochs or "
            f"train.max_steps to read less of it"
        )


def item_seed(*key: int) -> int:
    """A 62-bit augmentation seed, a pure function of ``key`` (seed, epoch, rank, worker, row)."""
    a, b = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint32)
    return (int(a) << 30 ^ int(b)) % 2**62


class StreamEpoch(IterableDataset):
    """Process ``rank``'s training items ``(views, label, seed, bad)`` of epoch ``epoch`` of
    ``stream`` from its batch ``start`` on, ``batch`` images a batch, ``workers`` loader workers
    (the items an indexed source's :class:`~sslkd.data.augment.MultiCropDataset` gives). Every row
    is one item: a row that cannot be decoded is replaced by the next one that can (its views
    drawn with the bad row's seed; ``bad`` names it), so that a resumed worker skips rows, not items."""

    def __init__(
        self,
        stream: ImageStream,
        transform: Callable,
        seed: int,
        epoch: int,
        rank: int,
        world: int,
        batch: int,
        start: int,
        workers: int,
    ) -> None:
        self.stream, self.transform, self.seed, self.epoch = stream, transform, seed, epoch
        self.rank, self.world, self.batch, self.workers = rank, world, batch, max(1, workers)
        self.batches = len(stream) // world // batch  # this process's batches in the epoch
        self.start = min(start, self.batches)
        self.pil = isinstance(transform, PILMultiCrop)

    def __len__(self) -> int:
        """The items the loader gives: the rest of the epoch after :meth:`dropped_batches`."""
        return (self.batches - self.start + self.dropped_batches()) * self.batch

    def dropped_batches(self) -> int:
        """Batches the loader gives before the resumed position, to be dropped by its reader: the
        workers drop whole rounds of batches (one each), not the part of a round before ``start``."""
        return self.start % self.workers

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        w = info.id if info is not None else 0
        skip = self.start // self.workers * self.batch  # this worker's rows before `start`, whole rounds
        k, waiting = 0, []  # rows read; bad rows waiting for the next good one: (seed, message)
        while True:  # a stale row count: this process's part again, so every process ends together
            passed = 0
            for data, label, name in self.stream.rows(self.epoch, self.rank, self.world):
                passed, k = passed + 1, k + 1
                if k <= skip:
                    continue
                seed = item_seed(self.seed, self.epoch, self.rank, w, k)
                try:  # decoded once, even when it stands in for the bad rows before it
                    img = self._image(data, name)
                except CorruptImageError as e:
                    waiting.append((seed, str(e)))
                    if len(waiting) >= MAX_BAD_IN_A_ROW:
                        raise DatasetError(f"{len(waiting)} rows in a row could not be decoded, last: {e}") from None
                    continue
                for bad_seed, message in waiting:
                    yield self._views(img, bad_seed), label, bad_seed, message
                waiting = []
                yield self._views(img, seed), label, seed, ""
            if not passed:  # an empty part (bad rows waiting pile up across passes: the error above ends them)
                return

    def _image(self, data: Any, name: str):
        img = decode(self.stream.open(data), self.stream.channels, self.stream.draft, name=name)
        return img if self.pil else pil_to_uint8(img)

    def _views(self, img, seed: int) -> list[torch.Tensor]:
        with torch.random.fork_rng(devices=[]):  # as MultiCropDataset: the draw depends on the seed alone
            torch.default_generator.manual_seed(seed)
            return self.transform(img)
