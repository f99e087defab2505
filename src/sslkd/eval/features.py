"""Frozen-backbone features of a whole dataset, normalised on the device in batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sslkd.data.base import ImageArrayDataset
from sslkd.device import native_bf16
from sslkd.distributed import gather_batch, world_size
from sslkd.distributed import rank as dist_rank


def normalize_batch(x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    size: int | None = None) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float normalised (and resized to ``size``)."""
    x = x.float().div_(255)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, dataset: ImageArrayDataset, mean: Sequence[float],
                     std: Sequence[float], device: torch.device | str = "cpu", batch_size: int = 256,
                     size: int | None = None, max_samples: int | None = None,
                     precision: str = "auto", progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, D] float32 on CPU, labels [N])`` of ``backbone(x)`` (CLS / pooled);
    ``progress`` shows a bar with ETA. Under ``torch.distributed`` every process embeds every
    ``world``-th image and all of them get the whole ``[N, D]``, in dataset order."""
    was_training = backbone.training
    backbone.eval()
    images, labels = dataset.tensors()
    if max_samples is not None and max_samples < len(images):
        idx = torch.linspace(0, len(images) - 1, max_samples).long()  # evenly spaced: all classes
        images, labels = images[idx], labels[idx]
    device = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" or (precision == "auto" and native_bf16(device)) else None
    n, rank, world = len(images), dist_rank(), world_size()
    per = -(-n // world)
    mine = torch.arange(rank, n, world)
    out = []
    for i in tqdm(range(0, per, batch_size), desc=f"features {dataset.name}", unit="batch",
                  disable=not progress, leave=False):
        idx = mine[i:i + batch_size]
        # a process with fewer images than the others still runs the batch (on one image, output
        # dropped): a sharded (FSDP) backbone's forward is a collective every process must join
        take = idx if len(idx) else torch.zeros(1, dtype=torch.long)
        x = normalize_batch(images[take].to(device), mean, std, size)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            y = backbone(x).float()
        if len(idx):
            out.append(y)
    backbone.train(was_training)
    feats = torch.cat(out) if out else torch.zeros(0, 0, device=device)
    if world > 1:  # pad to the same length, gather [world * per, D], undo the interleaving
        dim = torch.tensor([feats.shape[1] if len(feats) else 0], device=device)
        torch.distributed.all_reduce(dim, op=torch.distributed.ReduceOp.MAX)
        padded = torch.zeros(per, int(dim), device=device)
        padded[:len(feats)] = feats
        feats = gather_batch(padded, differentiable=False).reshape(world, per, -1).transpose(0, 1).reshape(
            world * per, -1)[:n]
    return feats.cpu(), labels.clone()
