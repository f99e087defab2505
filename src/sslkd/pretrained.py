"""Backbones out of sslkd checkpoints (or freshly initialised), ready for evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sslkd import checkpoint as ckpt
from sslkd.config import Config, from_dict, stored_config
from sslkd.methods import Method, build_method
from sslkd.models import Backbone


@dataclass
class Pretrained:
    backbone: Backbone
    config: Config
    num_channels: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    step: int
    path: Path | None


def config_of(state: dict) -> Config:
    """The run config a checkpoint's state was trained with."""
    return from_dict(Config, stored_config(state["config"]))


def load_method(path: str | Path) -> tuple[Method, dict, Path]:
    """The whole method (networks, heads, buffers) of an ``sslkd pretrain`` checkpoint or run folder,
    with the checkpoint's state and path; built for evaluation (a distillation method does not
    reload its frozen source teacher)."""
    path = ckpt.resolve_checkpoint(path)
    state = ckpt.load(path)
    cfg = config_of(state)
    data = state["data"]
    img_size = cfg.aug.global_crops_size or data["img_size"]
    method = build_method(cfg, data["num_channels"], img_size, eval_only=True)
    method.load_for_eval(state["method"])
    return method, state, path


def load_pretrained(path: str | Path, which: str = "teacher", model: int = 1) -> Pretrained:
    """The ``teacher`` (EMA) or ``student`` backbone of an ``sslkd pretrain`` checkpoint (``model``
    2 for MOKD's second model)."""
    if which not in ("teacher", "student"):
        raise ValueError(f"weights must be 'teacher' or 'student', got '{which}'")
    method, state, path = load_method(path)
    data = state["data"]
    return Pretrained(
        method.eval_backbone(which, model).eval(),
        config_of(state),
        data["num_channels"],
        method.img_size,
        tuple(data["mean"]),
        tuple(data["std"]),
        int(state["step"]),
        path,
    )
