"""What a run changes as it trains, beside its networks: the step, the training clock, the
optimisers and the gradient scaler, the plan of a time budget, the files skipped. The
:class:`~sslkd.train.resume.Checkpointer` writes and restores it with the networks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslkd.train.budget import Plan


@dataclass
class TrainState:
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    step: int = 0  # optimiser steps taken
    train_seconds: float = 0.0  # wall-clock training time, kept across resumptions
    skipped_files: int = 0  # files that could not be decoded, replaced (data.on_corrupt=skip)
    resumed_world: int = 1  # processes of the run a checkpoint came from (its epoch's data order)
    plan: Plan | None = None  # a time budget's plan (train.time_budget_minutes), once measured
    saved_step: int = -1  # the step of the last checkpoint written or read
