"""The training engine: a method, its data and schedules, checkpoints and resumption."""

from sslkd.errors import TrainingError
from sslkd.train.engine import Trainer

__all__ = ["Trainer", "TrainingError"]
