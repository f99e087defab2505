"""What the training engine reads: its datasets (by config), and what the loader workers report.

The workers decode, augment and replace files that cannot be decoded; the main process decides
what a bad file means (``data.on_corrupt``), so the decision and the count live in one place.
"""

from __future__ import annotations

import dataclasses
import signal
import warnings
from collections.abc import Callable
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from sslkd.config import Config
from sslkd.data import DatasetError, NoHeldOutSplitError, get_dataset, held_out
from sslkd.data.augment import MultiCropTransform, SeededEpochSampler
from sslkd.data.base import ImageSource
from sslkd.data.stream import StreamEpoch
from sslkd.data.views import TrainViews
from sslkd.device import reset_cpu_malloc
from sslkd.distributed import is_distributed
from sslkd.errors import TrainingError


def ignore_stop_signals(worker_id: int) -> None:  # noqa: ARG001
    """Loader workers leave SIGINT/SIGTERM to the main process: Ctrl-C, ``docker stop`` or Slurm
    signal the whole process group, and a worker dying first would crash the loader before the
    main process has checkpointed (the loader stops its workers itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    reset_cpu_malloc()  # decoding photos of every size: freed buffers go back to the system


def epoch_loader(
    data: Dataset,
    cfg: Config,
    epoch: int,
    start: int,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
    start_world: int | None = None,
) -> DataLoader:
    """The loader of one epoch's training items from image ``start`` (counted over all processes)
    on, for process ``rank`` of ``world``: per-process batches of ``batch_size / (accum_steps x
    world)``, shard by shard when the data are shards (``shard_of``). ``start_world``: the number
    of processes that read the first ``start`` images (a run resumed with another number)."""
    t, nw = cfg.train, cfg.data.num_workers
    if isinstance(data, IterableDataset):  # a stream's epoch (StreamEpoch): in its own order, its own workers
        return DataLoader(
            data,
            batch_size=t.batch_size // (t.accum_steps * world),
            drop_last=True,
            num_workers=data.workers if nw else 0,
            pin_memory=pin_memory,
            prefetch_factor=4 if nw else None,
            worker_init_fn=ignore_stop_signals if nw else None,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),  # the global RNG left untouched
        )
    groups = getattr(getattr(data, "base", data), "shard_of", None)
    moved = start and groups is not None and start_world not in (None, world)
    sampler = SeededEpochSampler(
        len(data),
        cfg.seed,
        epoch,
        0 if moved else start // world,
        rank,
        world,
        groups,
        (start, start_world) if moved else None,
    )
    return DataLoader(
        data,
        batch_size=t.batch_size // (t.accum_steps * world),
        sampler=sampler,
        drop_last=True,
        num_workers=nw,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if nw else None,
        worker_init_fn=ignore_stop_signals if nw else None,
        # own generator: creating a loader must not consume the global RNG (a resumed run creates one mid-epoch)
        generator=torch.Generator().manual_seed(cfg.seed + epoch),
    )


def data_kwargs(cfg: Config) -> dict[str, Any]:
    d = cfg.data
    return dict(
        root=d.root,
        download=d.download,
        img_size=d.img_size,
        seed=cfg.seed,
        on_corrupt=d.on_corrupt,
        max_pixels=d.max_pixels,
        in_memory=d.in_memory,
        labels=d.labels,
        options=d.options,
    )


def load_datasets(cfg: Config, verbose: bool = False) -> tuple[ImageSource, ImageSource | None]:
    """The training set and, when kNN is monitored, the test set (None if the data has no labels
    or no held-out split: the monitor is then skipped, said once, rather than scored on fitting)."""
    d = cfg.data
    kw = data_kwargs(cfg)
    train = get_dataset(d.name, "train", subset_fraction=d.subset_fraction, verbose=verbose, stream=True, **kw)
    test = None
    if cfg.eval.knn_every and train.num_classes:
        try:
            test = held_out(d.name, train, **kw)
        except NoHeldOutSplitError as e:
            if verbose:
                print(f"evaluation monitor off: {e}")
    elif cfg.eval.knn_every and verbose:
        print(f"evaluation monitor off: {train.name} has no labels to score with")
    return train, test


def count_bad_files(
    bad: list[str], on_corrupt: str, say: Callable[[str], Any] = print, device: torch.device | str = "cpu"
) -> int:
    """A batch's undecodable files (its items' newline-joined ``bad`` messages; the workers
    replaced them): under ``fail`` stop naming the first, before any step uses the batch; under
    ``skip`` say each and return how many, summed over processes (every process then holds the
    same count, and all of them stop together: one stopping alone would hang the others)."""
    errors = [e for b in bad if b for e in b.split("\n")]
    total = len(errors)
    if is_distributed():
        t = torch.tensor([total], device=device)
        torch.distributed.all_reduce(t)
        total = int(t)
    if total and on_corrupt == "fail":
        first = errors[0] if errors else f"a file another process read could not be decoded ({total} in this batch)"
        raise DatasetError(f"{first}; --set data.on_corrupt=skip skips and counts such files")
    for e in errors:
        say(f"skipped: {e}")
    return total


def build_views(cfg: Config, train_set, multiple: int, paired: bool) -> TrainViews:
    """The run's training views (:class:`~sslkd.data.views.TrainViews`): the multi-crop recipe
    (crop sizes a multiple of ``multiple``, the method's patch grid; ``paired``: one crop plain +
    jittered, DMT), made per image in the loader workers or as batches on the device
    (``data.augment_on``)."""
    if cfg.data.img_size is None and cfg.aug.global_crops_size is None and train_set.img_size % multiple:
        raise TrainingError(
            f"{cfg.data.name} images are {train_set.img_size}px, not divisible by the patch size "
            f"{multiple} of the ViTs trained (model.patch_size, MOKD's method.model2.patch_size); set data.img_size"
        )
    aug = dataclasses.replace(cfg.aug, paired=True) if paired else cfg.aug
    transform = MultiCropTransform.from_config(
        aug, train_set.img_size, train_set.num_channels, train_set.mean, train_set.std, multiple=multiple
    )
    try:
        return TrainViews(train_set, transform, on_device=cfg.data.augment_on == "device")
    except DatasetError as e:
        raise TrainingError(str(e)) from None


class ViewStream:
    """The training views of each epoch, as batches of normalised crops on ``device`` (see
    :class:`~sslkd.data.views.TrainViews`), keyed by the first image's seed so that a resumed run
    draws the same views. Images decoded while training report those they could not decode
    (``on_bad``, with the batch's messages)."""

    def __init__(self, cfg: Config, views: TrainViews, rank: int, world: int, device: torch.device) -> None:
        self.cfg, self.views, self.rank, self.world, self.device = cfg, views, rank, world, device
        self.transform = views.transform

    def loader(self, epoch: int, start: int, read_by: int | None = None) -> DataLoader:
        """Epoch ``epoch``'s loader from image ``start`` on; ``read_by``: the processes that read the
        first ``start`` images (a checkpoint's, when resuming). A stream's loader does not end and
        starts with batches to drop: read it through :meth:`batches`."""
        cuda, t = self.device.type == "cuda", self.cfg.train
        batch = t.batch_size // (t.accum_steps * self.world)
        items = self.views.stream_items(
            self.cfg.seed, epoch, self.rank, self.world, batch, start // (self.world * batch), self.cfg.data.num_workers
        )
        if items is None:
            items = self.views.items()
        elif read_by not in (None, self.world) and start:
            warnings.warn(
                f"a stream's epoch resumed by {self.world} processes, read by {read_by}: the rest of the "
                f"epoch is read approximately (rows may repeat or be missed until it ends)",
                stacklevel=2,
            )
        return epoch_loader(items, self.cfg, epoch, start, self.rank, self.world, cuda, read_by or self.world)

    def batches(self, epoch: int, start: int, read_by: int | None = None, on_bad: Callable | None = None):
        """The views of epoch ``epoch`` from image ``start`` on: the loader's first
        ``dropped_batches`` (a resumed stream's) dropped, then ``len(loader)`` batches (a stream
        gives no end of its own). The loader's workers are stopped on the way out, an error
        included: they ignore SIGTERM (a stop signal is the main process's), so a worker left to
        exit-time cleanup would block the interpreter's exit."""
        loader = self.loader(epoch, start, read_by)
        drop = loader.dataset.dropped_batches() if isinstance(loader.dataset, StreamEpoch) else 0
        batches = iter(loader)
        try:
            for item in islice(batches, drop, len(loader)):
                if self.views.reports_bad and on_bad is not None:
                    on_bad(item[-1])
                yield self.views.to_device(item, self.device)
        finally:
            stop = getattr(batches, "_shutdown_workers", None)  # DataLoader's own clean shutdown
            if stop is not None:
                stop()
