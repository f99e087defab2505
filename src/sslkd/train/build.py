"""How a training run is assembled, piece by piece: its processes and device, the method's
networks (teachers, starting weights), their wrapping for several processes, and the schedules.
The :class:`~sslkd.train.engine.Trainer` calls these in order; each is usable alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from sslkd.checkpoint import list_checkpoints
from sslkd.config import Config, TrainConfig
from sslkd.device import resolve_device, tune_cpu_malloc
from sslkd.distributed import init_from_env
from sslkd.errors import TrainingError
from sslkd.methods import Method, build_method, method_class
from sslkd.schedules import cosine_schedule
from sslkd.teachers import load_teachers, load_weights
from sslkd.train import fsdp
from sslkd.train.optim import compile_networks


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: ``rank`` of ``world`` (torchrun's), on ``device``."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join_processes(cfg: Config) -> Processes:
    """Join torchrun's process group (if any) and pick this process's device."""
    rank, world, local_rank = init_from_env(cfg.device)
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.train.tune_malloc:
        tune_cpu_malloc()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
    return Processes(rank, world, local_rank, device)


def steps_per_epoch(t: TrainConfig, images: int, world: int) -> int:
    """Optimiser steps in an epoch of ``images``; a batch that cannot be split evenly over
    ``accum_steps`` micro-batches and ``world`` processes, or exceeds the images, is an error."""
    if t.batch_size % (t.accum_steps * world):
        raise TrainingError(
            f"train.batch_size={t.batch_size} (the global batch of an optimiser step) is not "
            f"divisible by train.accum_steps={t.accum_steps} x {world} processes"
        )
    if images < t.batch_size:
        raise TrainingError(f"train.batch_size={t.batch_size} exceeds the {images} training images")
    return images // t.batch_size


def networks(cfg: Config, num_channels: int, img_size: int, out: Path, procs: Processes) -> Method:
    """The method's networks on ``procs.device``, initialised from ``cfg.init_seed`` (whatever the
    teachers or starting weights draw), with its frozen teachers and ``model.pretrained`` weights
    (not read when ``out`` holds checkpoints: a resumed run takes every weight from them)."""
    torch.manual_seed(cfg.init_seed)
    teachers = None
    if method_class(cfg.method.name).needs_teachers:
        with torch.random.fork_rng(devices=[]):  # the student's initialisation does not depend on the teachers
            teachers = load_teachers(cfg.method, num_channels)
        if procs.is_main:
            for teacher in teachers:
                print(teacher.report)
    with torch.random.fork_rng(devices=[]):  # pretrained weights leave the initialisation stream alone
        weights = load_weights(cfg, read=not list_checkpoints(out))
    method = build_method(cfg, num_channels, img_size, teachers=teachers, weights=weights)
    method.to(procs.device)
    if procs.is_main:
        for report in method.weight_reports:
            print(f"model.pretrained: {report}".replace("teacher ", "", 1))
    if cfg.train.compile:
        compile_networks(method)
    return method


def wrap(method: Method, cfg: Config, procs: Processes) -> tuple[Method, torch.nn.Module, bool]:
    """``(method, model, sharded)``: ``model`` is what a step calls (the method itself in one
    process; its DDP or FSDP wrapper in several, with SyncBatchNorm on GPUs). Each process then
    draws its own drop-path stream (every one built the same weights)."""
    if procs.world == 1:
        return method, method, False
    sharded = cfg.train.parallel == "fsdp"
    if procs.device.type == "cuda":  # SyncBatchNorm needs GPUs; CPU runs keep per-process statistics
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if sharded:  # every process built the same weights (same seed) and keeps its shard
        model = fsdp.shard_method(method)
    else:  # find_unused_parameters: the mask token, a frozen last layer, ... get no gradient some steps
        cuda = procs.device.type == "cuda"
        model = DDP(method, device_ids=[procs.local_rank] if cuda else None, find_unused_parameters=True)
    torch.manual_seed(cfg.seed + 1000 * procs.rank)
    return method, model, sharded


@dataclass
class Schedules:
    """Per-step learning rate, weight decay and EMA momentum over ``total`` steps."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray

    @property
    def total(self) -> int:
        return len(self.lr)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"lr": self.lr, "wd": self.wd, "momentum": self.momentum}


def plan_schedules(t: TrainConfig, total: int, steps_per_epoch: int, planned: bool = False) -> Schedules:
    """The schedules of a run of ``total`` steps: warm-up over ``train.warmup_epochs`` of
    ``steps_per_epoch`` steps, or, for a time budget's plan (``planned``), over the warm-up's
    share of the configured run."""
    warm = round(t.warmup_epochs / t.epochs * total) if planned else round(t.warmup_epochs * steps_per_epoch)
    return Schedules(
        cosine_schedule(t.base_lr * t.batch_size / 256, t.min_lr, total, warm),
        cosine_schedule(t.weight_decay, t.weight_decay_end, total),
        cosine_schedule(t.momentum_teacher, t.momentum_teacher_end, total),
    )
