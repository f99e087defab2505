"""Per-iteration schedules (learning rate, weight decay, EMA momentum)."""

from __future__ import annotations

import numpy as np


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """``total_steps`` values: linear warmup ``warmup_start -> base`` over ``warmup_steps`` (the
    first value is ``warmup_start``, ``base`` is reached at step ``warmup_steps``), then
    ``final + (base - final) * (1 + cos(pi * t / T)) / 2`` with ``t`` counting from the end of
    warmup and ``T = total_steps - warmup_steps``."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(warmup_start, base, warmup_steps, endpoint=False) if warmup_steps else np.array([])
    t = np.arange(total_steps - warmup_steps)
    rest = total_steps - warmup_steps
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / max(rest, 1)))
    out = np.concatenate([warm, cos])
    assert len(out) == total_steps
    return out
