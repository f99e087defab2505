"""A run's metrics: one JSONL record per optimiser step, the last of each flush to the loggers
(TensorBoard, W&B, MLflow: :mod:`sslkd.train.loggers`).

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

from sslkd.train.loggers import Logger, finish_loggers


class RunLog:
    """``metrics.jsonl`` in ``out`` and the ``loggers`` (only where ``enabled``: the main process).

    ``schedules`` maps a name (``lr``, ``wd``, ``momentum``) to its per-step values, written
    into every record; ``check`` sees each step's losses before anything of it is written (the
    engine's non-finite check). Records after ``start_step`` (a resumed run's step) are dropped
    from an existing file first: they are logged again."""

    def __init__(
        self,
        out: Path,
        enabled: bool,
        steps_per_epoch: int,
        schedules: dict[str, Sequence[float] | torch.Tensor],
        check: Callable[[dict[str, torch.Tensor], int], None] | None = None,
        loggers: list[Logger] | None = None,
        start_step: int = 0,
    ) -> None:
        if enabled:  # a run resumed at start_step rewrites what it logged after it (no step twice)
            truncate(out / "metrics.jsonl", start_step)
        self.file = open(out / "metrics.jsonl" if enabled else os.devnull, "a")  # noqa: SIM115 - open for the run, closed by close()
        self.out, self.loggers = out, (loggers or []) if enabled else []
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
        if last:
            values = {f"train/{k}": v for k, v in last.items() if k not in ("step", "epoch")}
            for logger in self.loggers:
                logger.scalars(values, last["step"])
        self.pending.clear()
        return last

    def record(self, rec: dict[str, Any], scalars: dict[str, float]) -> None:
        """Write an extra record now (evaluations), its ``scalars`` to the loggers at ``rec['step']``."""
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        for logger in self.loggers:
            logger.scalars(scalars, rec["step"])

    def close(self) -> None:
        self.file.close()
        finish_loggers(self.loggers, self.out)


def truncate(path: Path, step: int) -> None:
    """Drop the records of ``path`` (a ``metrics.jsonl``) after ``step``, atomically; a torn last
    line (a crash mid-write) goes too."""
    if not path.is_file():
        return
    kept, dropped = [], False
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped = True
                continue
            if isinstance(rec, dict) and int(rec.get("step", 0)) > step:
                dropped = True
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
