"""Training engine, schedules and checkpoints."""

from sslkd.train.engine import Trainer, TrainingError
from sslkd.train.schedules import cosine_schedule

__all__ = ["Trainer", "TrainingError", "cosine_schedule"]
