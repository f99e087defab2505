"""DINO/iBOT multi-crop augmentation on torchvision.transforms.v2, sized for small images too.

Two global crops (blur p=1.0 / 0.1, solarize p=0.2 on the second) and N local crops (blur p=0.5),
each with flip, colour jitter (p=0.8) and grayscale (p=0.2), as in DINO and iBOT. Blur kernels and
sigmas scale with the crop size (DINO's 23-pixel kernel is for 224 pixels). Grayscale images get
brightness/contrast jitter only. ``paired`` (DMT) gives instead one crop twice: plain for frozen
teachers, colour-jittered for the student.

Every crop set is drawn from a generator seeded by ``(run seed, epoch, position)`` (see
:class:`SeededEpochSampler`), so augmentations do not depend on the number of workers and a
resumed run sees exactly the views the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import InterpolationMode, v2

from sslkd.data.base import DatasetError
from sslkd.data.folder import CorruptImageError
from sslkd.data.pil_augment import PILMultiCrop
from sslkd.data.recipe import CropRecipe


def _blur(size: int, p: float) -> v2.Transform:
    k = max(3, int(round(0.1 * size)) | 1)  # odd, ~10% of the crop (23 px at 224)
    sigma = (0.1, max(0.2, 2.0 * size / 224))
    return v2.RandomApply([v2.GaussianBlur(k, sigma=sigma)], p=p)


class MultiCropTransform:
    """uint8 ``[C, H, W]`` -> list of float crops (globals first, then locals), normalised."""

    def __init__(self, recipe: CropRecipe) -> None:
        r = self.recipe = recipe
        self.global_size, self.local_size, self.local_number = r.global_size, r.local_size, r.local_number
        if r.channels == 3:
            jitter = v2.ColorJitter(r.brightness, r.contrast, r.saturation, r.hue)
            colour = [v2.RandomApply([jitter], p=r.color_jitter_p), v2.RandomGrayscale(p=r.grayscale_p)]
        else:
            colour = [v2.RandomApply([v2.ColorJitter(r.brightness, r.contrast)], p=r.color_jitter_p)]
        finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(r.mean), list(r.std))]

        def crop(size: int, scale: tuple[float, float]) -> list[v2.Transform]:
            return [
                v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
                v2.RandomHorizontalFlip(r.flip_p),
            ]

        g, blur_p = self.global_size, r.blur_p
        self.global1 = v2.Compose(crop(g, r.global_scale) + colour + [_blur(g, blur_p[0])] + finish)
        self.global2 = v2.Compose(
            crop(g, r.global_scale) + colour + [_blur(g, blur_p[1]), v2.RandomSolarize(128, p=r.solarize_p)] + finish
        )
        self.local = v2.Compose(
            crop(self.local_size, r.local_scale) + colour + [_blur(self.local_size, blur_p[2])] + finish
        )
        # paired (DMT): one crop, given plain (for frozen teachers) and colour-jittered (for the student)
        self.paired = r.paired
        self.pair_crop = v2.Compose(crop(g, r.global_scale))
        # DMT: "color jitter is only applied to the students" (no grayscale, blur or solarize)
        self.pair_colour, self.pair_finish = v2.Compose(colour[:1]), v2.Compose(finish)

    @classmethod
    def from_config(cls, aug, img_size: int, channels: int, mean, std, multiple: int = 1) -> MultiCropTransform:
        """The transform of an ``aug`` config section (:meth:`CropRecipe.from_config`)."""
        return cls(CropRecipe.from_config(aug, img_size, channels, mean, std, multiple))

    def __call__(self, img: torch.Tensor) -> list[torch.Tensor]:
        if self.paired:
            c = self.pair_crop(img)
            return [self.pair_finish(c), self.pair_finish(self.pair_colour(c))]
        crops = [self.global1(img), self.global2(img)]
        crops += [self.local(img) for _ in range(self.local_number)]
        return crops


def load_or_replace(base: Dataset, index: int, seed: int, tries: int = 16, pil: bool = False) -> tuple[Any, int, str]:
    """``base[index]``, or, if its file cannot be decoded (corrupt, truncated, deleted), another
    image drawn from ``seed``. Returns ``(image, label, bad)`` where ``bad`` lists the files that
    failed (newline-separated, ``""`` for none): the training loop counts them, or stops on them
    under ``data.on_corrupt: fail``, in the main process. ``pil``: the image as PIL (a lazy folder)."""
    bad: list[str] = []
    g = torch.Generator().manual_seed(seed)
    for _ in range(tries):
        try:
            img, label = base.pil_item(index) if pil else base[index]  # type: ignore[attr-defined]
            return img, label, "\n".join(bad)
        except CorruptImageError as e:
            bad.append(str(e))
            index = int(torch.randint(len(base), (1,), generator=g))  # type: ignore[arg-type]
    raise DatasetError(f"{tries} files in a row could not be decoded, last: {bad[-1]}")


def prefetch(base: Dataset, items: list[tuple[int, int]]) -> None:
    """Announce a batch's ``(index, seed)`` reads to a lazily read dataset (shards fetch them
    concurrently); in-memory sets have nothing to fetch."""
    announce = getattr(base, "prefetch", None)
    if announce is not None:
        announce([index for index, _ in items])


class MultiCropDataset(Dataset):
    """Wraps a uint8 dataset; item ``(index, seed)`` -> ``(crops, label, seed, bad)`` drawn with that
    seed (``bad``: see :func:`load_or_replace`). A lazily read folder (``base.lazy``) hands PIL
    images to a :class:`~sslkd.data.pil_augment.PILMultiCrop`, whose crops are uint8."""

    def __init__(self, base: Dataset, transform: Callable[[Any], list[torch.Tensor]]) -> None:
        self.base, self.transform = base, transform
        self.pil = getattr(base, "lazy", False) and isinstance(transform, PILMultiCrop)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitems__(self, items: list[tuple[int, int]]) -> list:  # the DataLoader's batched fetch
        prefetch(self.base, items)
        return [self[item] for item in items]

    def __getitem__(self, item: tuple[int, int]) -> tuple[list[torch.Tensor], int, int, str]:
        index, seed = item
        img, label, bad = load_or_replace(self.base, index, seed, pil=self.pil)
        # v2 transforms draw from torch's global generator: fork it so that the draw depends only
        # on the seed (not on worker count or the model's dropout draws) and leaves it untouched.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: CUDA streams stay untouched
            crops = self.transform(img)
        return crops, label, seed, bad


class RawDataset(Dataset):
    """Item ``(index, seed)`` -> ``(uint8 image, label, seed, bad)``: for augmentation on the device."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitems__(self, items: list[tuple[int, int]]) -> list:
        prefetch(self.base, items)
        return [self[item] for item in items]

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int, str]:
        img, label, bad = load_or_replace(self.base, *item)
        return img, label, item[1], bad


class SeededEpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, seed)`` for one epoch: a permutation and per-sample augmentation seeds
    that are pure functions of ``(seed, epoch)``. ``start`` skips this process's first samples
    (resume); ``rank``/``world_size`` share the permutation out for distributed runs: every
    process gets ``N // world_size`` samples (equal batch counts: no process waits for another's
    extra step), the last ``N mod world_size`` of the epoch's order are not read that epoch.

    Without ``groups`` process ``r`` reads positions ``r, r + world, ...``: after ``s`` images over
    all processes the first ``s`` of the order have been read, whatever the number of processes.

    ``groups`` (a group id per sample: its shard) makes the permutation read group by group: the
    groups in a random order, each group's samples shuffled, and every process gets one contiguous
    stretch of it (a few whole shards); batch ``j`` of a process goes to loader worker
    ``j mod workers``: every rank and every worker reads its own part. ``moved`` =
    ``(images read, old world size)`` resumes such an epoch with another number of processes: the
    images the old processes had not read, shared out anew."""

    def __init__(
        self,
        num_samples: int,
        seed: int,
        epoch: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        groups: np.ndarray | None = None,
        moved: tuple[int, int] | None = None,
    ) -> None:
        self.num_samples, self.seed, self.epoch = num_samples, seed, epoch
        self.start, self.rank, self.world_size = start, rank, world_size
        self.groups, self.moved = groups, moved

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n_all, w, r = self.num_samples, self.world_size, self.rank
        perm = torch.randperm(n_all, generator=g)
        seeds = torch.randint(0, 2**62, (n_all,), generator=g)
        if self.groups is None:
            keep = n_all // w * w
            return perm[:keep][r::w], seeds[:keep][r::w]
        groups = torch.as_tensor(np.asarray(self.groups), dtype=torch.int64)
        place = torch.empty(int(groups.max()) + 1, dtype=torch.float64)
        place[torch.randperm(len(place), generator=g)] = torch.arange(len(place), dtype=torch.float64)
        # a group's place plus a uniform draw in [0, 1): sorted, the groups in random order, shuffled within
        perm = torch.argsort(place[groups] + torch.rand(n_all, generator=g, dtype=torch.float64))
        if self.moved:  # drop what the old processes read (each the start of its stretch)
            read, old = self.moved
            n_old, k = n_all // old, read // old
            left = torch.ones(n_all, dtype=torch.bool)
            for q in range(old):
                left[q * n_old : q * n_old + k] = False
            perm, seeds = perm[left], seeds[left]
        n = len(perm) // w
        return perm[r * n : (r + 1) * n], seeds[r * n : (r + 1) * n]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        perm, seeds = self._draw()
        for i in range(self.start, len(perm)):
            yield int(perm[i]), int(seeds[i])

    def __len__(self) -> int:
        left = self.num_samples - (self.moved[0] if self.groups is not None and self.moved else 0)
        return max(0, left // self.world_size - self.start)
