"""Schedules, one home for all: per-step values (learning rate, weight decay, EMA momentum) for
pretraining, linear probes and fine-tuning; the teacher temperature's warmup; the last layer's freeze."""

from __future__ import annotations

import math
import warnings

import numpy as np

from sslkd.errors import TrainingError


def cosine_schedule(
    base: float,
    final: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
    warmup_from_first: bool = False,
) -> np.ndarray:
    """``total_steps`` values: linear warmup ``warmup_start -> base`` over ``warmup_steps`` (the
    first value is ``warmup_start``, ``base`` is reached at step ``warmup_steps``; with
    ``warmup_from_first`` the ramp is one step ahead, ``start + (i + 1) / W * (base - start)``, as
    fine-tuning recipes (MAE/BEiT) count), then ``final + (base - final) * (1 + cos(pi * t / T)) / 2``
    with ``t`` counting from the end of warmup and ``T = total_steps - warmup_steps``."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(warmup_start, base, warmup_steps + 1)[int(warmup_from_first) :][:warmup_steps]
    t = np.arange(total_steps - warmup_steps)
    rest = total_steps - warmup_steps
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / max(rest, 1)))
    out = np.concatenate([warm, cos])
    assert len(out) == total_steps
    return out


def freeze_steps(
    epochs: float | None, steps_per_epoch: int, total_steps: int, max_steps: int | None, has_last_layer: bool = True
) -> int:
    """Steps during which the head's last layer is not updated: ``epochs`` (``train.freeze_last_layer``)
    or, when None, the first 1% of the planned run (DINO/iBOT: 1 of 100-800 epochs). A freeze that
    covers the whole run is refused (the last layer would keep its random prototypes), or warned
    about when only ``max_steps`` cuts the run short (a trial of a longer run)."""
    planned = total_steps if max_steps is None else min(total_steps, max_steps)
    if epochs is None:
        steps = math.ceil(0.01 * planned)
        if steps >= planned and has_last_layer:  # a one-step run: its 1% (at least a step) is all of it
            warnings.warn(
                f"the head's last layer stays frozen for this whole run of {planned} step(s): the default "
                f"freezes the first 1% of a run (at least one step); set train.freeze_last_layer=0 to train it",
                stacklevel=3,
            )
        return steps
    steps = round(epochs * steps_per_epoch)
    if steps and steps >= planned and has_last_layer:
        why = (
            f"train.freeze_last_layer={epochs:g} epochs ({steps} steps) covers the whole run of {planned} "
            f"steps: the head's last layer would never train. DINO/iBOT freeze it for 1 of 100-800 epochs; "
            f"leave the key unset (1% of the run) or lower it"
        )
        if steps >= total_steps:
            raise TrainingError(why)
        warnings.warn(why + " (train.max_steps cuts this run short)", stacklevel=3)
    return steps


def warmup_temp(start: float, end: float, warm_epochs: float, epoch: float) -> float:
    """Linear warmup from ``start`` to ``end`` over ``warm_epochs`` (DINO/iBOT/MOKD's teacher
    temperature): one value per epoch as DINO/iBOT's ``linspace(start, end, W)``, or, for a warmup
    shorter than an epoch (a short run keeping the paper's share, e.g. MOKD's 30 of 100 epochs as
    0.3 of one), per step."""
    if warm_epochs <= 0 or epoch >= warm_epochs:
        return end
    frac = epoch / warm_epochs if warm_epochs < 1 else min(1.0, int(epoch) / max(math.ceil(warm_epochs) - 1, 1))
    return start + frac * (end - start)
