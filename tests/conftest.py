import os

import pytest
import torch

from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.train import Trainer

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLKD_CACHE", str(tmp_path / "cache"))


# A tiny DINO run: a one-block ViT on 64 synthetic 16 px images, 4 steps an epoch (seconds on a CPU).
TINY = {
    "device": "cpu",
    "data": {"name": "synthetic", "img_size": 16},
    "aug": {"local_crops_number": 2, "local_crops_size": 8},
    "model": {"backbone": "vit_tiny", "patch_size": 4, "depth": 1, "drop_path_rate": 0.1},
    "method": {"name": "dino", "out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32},
    "train": {"epochs": 2, "batch_size": 16, "warmup_epochs": 1, "log_every": 2, "freeze_last_layer": 0},
}


class TinyRuns:
    """Configs and trainers of the tiny run in a test's temporary folder: ``tiny.config("a",
    "train.max_steps=3")`` writes to ``tmp_path / "a"``; ``tiny.trainer(...)`` builds its Trainer on
    ``tiny.data``; ``base=`` replaces the tiny mapping (``tiny.base``)."""

    def __init__(self, tmp_path, data) -> None:
        self.tmp_path, self.data, self.base = tmp_path, data, TINY

    def config(self, out: str = "run", *overrides: str, base: dict | None = None):
        return load_config(None, [f"output_dir={self.tmp_path / out}", *overrides], base=base or self.base)

    def trainer(self, out: str = "run", *overrides: str, base: dict | None = None, data=None):
        return Trainer(self.config(out, *overrides, base=base), data or self.data, progress=False)


@pytest.fixture(scope="session")
def tiny_data():
    """The tiny run's training images: 64 synthetic 16 px RGB images of 10 classes."""
    return get_dataset("synthetic", "train", img_size=16, num_samples=64)


@pytest.fixture
def tiny(tmp_path, tiny_data) -> TinyRuns:
    return TinyRuns(tmp_path, tiny_data)
