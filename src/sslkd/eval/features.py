"""Frozen-backbone features of a whole dataset, normalised on the device in batches."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from sslkd.data.base import ImageSource
from sslkd.data.views import eval_batches, normalize_batch
from sslkd.device import native_bf16
from sslkd.distributed import gather_batch, world_size
from sslkd.distributed import rank as dist_rank


@torch.no_grad()
def extract_features(
    backbone: torch.nn.Module,
    dataset: ImageSource,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    size: int | None = None,
    max_samples: int | None = None,
    precision: str = "auto",
    progress: bool = False,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, D] float32 on CPU, labels [N])`` of ``backbone(x)`` (CLS / pooled);
    ``progress`` shows a bar with ETA. A lazily read folder is streamed through its evaluation
    view (shorter side to ``size * 256/224``, centre crop; ``num_workers`` loader processes);
    files that cannot be decoded are dropped with a warning. Under ``torch.distributed`` every
    process embeds every ``world``-th image and all of them get the whole ``[N, D]``, in order."""
    was_training = backbone.training
    backbone.eval()
    n = len(dataset)
    idx_all = torch.arange(n)
    if max_samples is not None and max_samples < n:
        idx_all = torch.linspace(0, n - 1, max_samples).long()  # evenly spaced: all classes
        n = max_samples
    labels = torch.as_tensor(dataset.labels)[idx_all]
    device = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" or (precision == "auto" and native_bf16(device)) else None
    rank, world = dist_rank(), world_size()
    per = -(-n // world)
    mine = idx_all[rank::world]
    out, bad = [], []
    batches = _batches(dataset, mine, per, batch_size, size, num_workers)
    for x, count, errors in tqdm(
        batches,
        total=-(-per // batch_size),
        desc=f"features {dataset.name}",
        unit="batch",
        disable=not progress,
        leave=False,
    ):
        # a process with fewer images than the others still runs the batch (on one image, output
        # dropped): a sharded (FSDP) backbone's forward is a collective every process must join
        x = normalize_batch(x.to(device), mean, std, size)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            y = backbone(x).float()
        if count:
            out.append(y[:count])
            bad += errors
    backbone.train(was_training)
    feats = torch.cat(out) if out else torch.zeros(0, 0, device=device)
    if world > 1:  # pad to the same length, gather [world * per, D], undo the interleaving
        dim = torch.tensor([feats.shape[1] if len(feats) else 0], device=device)
        torch.distributed.all_reduce(dim, op=torch.distributed.ReduceOp.MAX)
        padded = torch.zeros(per, int(dim), device=device)
        padded[: len(feats)] = feats
        feats = (
            gather_batch(padded, differentiable=False)
            .reshape(world, per, -1)
            .transpose(0, 1)
            .reshape(world * per, -1)[:n]
        )
    feats, labels = feats.cpu(), labels.clone()
    errors = bad
    if world > 1:  # every process learns which files failed on the others; image k * world + r is r's k-th
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, bad)
        errors = [""] * n
        for r, part in enumerate(gathered):
            for k, e in enumerate(part):
                errors[k * world + r] = e
    if any(errors):
        keep = torch.tensor([not e for e in errors])
        warnings.warn(
            f"features {dataset.name}: skipped {int((~keep).sum())} file(s) that cannot be decoded, "
            f"first: {next(e for e in errors if e)}",
            stacklevel=2,
        )
        feats, labels = feats[keep], labels[keep]
    return feats, labels


def _batches(
    dataset, mine: torch.Tensor, per: int, batch_size: int, size: int | None, num_workers: int
) -> Iterator[tuple[torch.Tensor, int, list[str]]]:
    """``(uint8 batch, images that count, errors)`` for ``ceil(per / batch_size)`` batches: this
    process's images (:func:`~sslkd.data.views.eval_batches`), then batches of one black image
    that count for nothing, so that every process runs as many batches as the others."""
    size = size or dataset.img_size
    for x, _, errors in eval_batches(dataset, size, mine.numpy(), batch_size, num_workers):
        yield x, len(x), errors
    for _ in range(-(-per // batch_size) - -(-len(mine) // batch_size)):
        yield torch.zeros(1, dataset.num_channels, size, size, dtype=torch.uint8), 0, []
