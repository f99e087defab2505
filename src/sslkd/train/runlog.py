"""A run's metrics: one JSONL record per optimiser step, the last of each flush to TensorBoard.

Steps are queued as device tensors and written in batches (``flush``), so the training loop
synchronises with the device once per ``train.log_every`` steps, not once per step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


class RunLog:
    """``metrics.jsonl`` and ``tb/`` in ``out`` (only where ``enabled``: the main process).

    ``schedules`` maps a name (``lr``, ``wd``, ``momentum``) to its per-step values, written
    into every record; ``check`` sees each step's losses before anything of it is written (the
    engine's non-finite check)."""

    def __init__(
        self,
        out: Path,
        enabled: bool,
        steps_per_epoch: int,
        schedules: dict[str, Sequence[float] | torch.Tensor],
        check: Callable[[dict[str, torch.Tensor], int], None] | None = None,
    ) -> None:
        self.file = open(out / "metrics.jsonl" if enabled else os.devnull, "a")  # noqa: SIM115 - open for the run, closed by close()
        self.tb = _tensorboard(out) if enabled else None
        self.steps_per_epoch = steps_per_epoch
        self.schedules = schedules
        self.check = check
        self.pending: list[tuple[int, dict, dict]] = []

    def add(self, step: int, losses: dict[str, torch.Tensor], metrics: dict[str, torch.Tensor]) -> None:
        """Queue the (0-based) ``step``'s detached losses and metrics."""
        self.pending.append((step, losses, metrics))

    def flush(self, rate: float | None = None) -> dict[str, Any]:
        """Write one record per queued step (one host sync for all of them); return the last
        record (with ``img_per_s`` when ``rate`` is given), also sent to TensorBoard."""
        last: dict[str, Any] = {}
        for step, losses, metrics in self.pending:
            if self.check is not None:
                self.check(losses, step + 1)
            rec = {"step": step + 1, "epoch": round((step + 1) / self.steps_per_epoch, 4)}
            rec.update({k: float(v[step]) for k, v in self.schedules.items()})
            rec.update({k: float(v) for k, v in losses.items()})
            rec.update({k: float(v) for k, v in metrics.items()})
            if rate is not None and step == self.pending[-1][0]:
                rec["img_per_s"] = rate
            self.file.write(json.dumps(rec) + "\n")
            last = rec
        self.file.flush()
        if last and self.tb is not None:
            for k, v in last.items():
                if k not in ("step", "epoch"):
                    self.tb.add_scalar(f"train/{k}", v, last["step"])
        self.pending.clear()
        return last

    def record(self, rec: dict[str, Any], scalars: dict[str, float]) -> None:
        """Write an extra record now (evaluations), its ``scalars`` to TensorBoard at ``rec['step']``."""
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, rec["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        return None
    return SummaryWriter(str(out / "tb"))
