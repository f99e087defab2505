"""Frozen-backbone features of a whole dataset, normalised on the device in batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sslkd.data.base import ImageArrayDataset
from sslkd.device import native_bf16


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
    ``progress`` shows a bar with ETA."""
    was_training = backbone.training
    backbone.eval()
    images, labels = dataset.tensors()
    if max_samples is not None and max_samples < len(images):
        idx = torch.linspace(0, len(images) - 1, max_samples).long()  # evenly spaced: all classes
        images, labels = images[idx], labels[idx]
    device = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" or (precision == "auto" and native_bf16(device)) else None
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=f"features {dataset.name}", unit="batch",
                  disable=not progress, leave=False):
        x = normalize_batch(images[i:i + batch_size].to(device), mean, std, size)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out.append(backbone(x).float().cpu())
    backbone.train(was_training)
    return torch.cat(out), labels.clone()
