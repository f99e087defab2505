"""The training loop shared by the linear probe and fine-tuning: mini-batches, a per-step
learning-rate scale (warm-up + cosine), cross-entropy, one optimiser step each."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm


def train_steps(
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    steps_per_epoch: int,
    scales: torch.Tensor,
    *,
    desc: str = "train",
    progress: bool = False,
) -> list[float]:
    """Train for ``epochs`` of ``steps_per_epoch`` steps; returns the mean loss of each epoch.

    ``batches(epoch)`` yields ``(x, y)`` for one epoch (at least ``steps_per_epoch`` of them);
    ``loss_of(x, y)`` is the scalar loss. At step ``s`` every parameter group's learning rate is its
    ``base_lr`` times ``scales[s]`` (a group without ``base_lr`` keeps the optimiser's initial rate
    as its base)."""
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    losses, step = [], 0
    bar = tqdm(total=epochs * steps_per_epoch, disable=not progress, desc=desc, unit="step")  # ETA per step
    for epoch in range(epochs):
        running = 0.0
        it = iter(batches(epoch))
        for i in range(steps_per_epoch):
            x, y = next(it)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * float(scales[step])
            loss = loss_of(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()
            step += 1
            bar.update()
            if i % 10 == 0:
                bar.set_postfix(epoch=epoch + 1, loss=f"{running / (i + 1):.3f}", refresh=False)
        losses.append(running / steps_per_epoch)
    bar.close()
    return losses


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit, val)`` indices: a class-balanced random ``fraction`` of the samples held out (at
    least one of each class with two or more samples) to choose a hyper-parameter on, the rest to fit."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = min(len(idx) - 1, max(1, int(round(len(idx) * fraction))))
        val.append(rng.choice(idx, size=max(n, 0), replace=False))
    val_idx = np.sort(np.concatenate(val))
    mask = np.ones(len(y), dtype=bool)
    mask[val_idx] = False
    return torch.from_numpy(np.flatnonzero(mask)), torch.from_numpy(val_idx)
