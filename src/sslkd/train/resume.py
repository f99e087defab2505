"""Checkpoints of a run and resuming from them: what a checkpoint holds and how it is written and
restored (:class:`Checkpointer`), and the rule that a checkpoint continues only the run that wrote
it (:func:`check_compatible`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslkd import checkpoint as ckpt
from sslkd.config import Config, load_config, stored_config, to_dict
from sslkd.distributed import from_main_process, gather_batch, is_distributed
from sslkd.errors import CheckpointError, TrainingError
from sslkd.train import fsdp
from sslkd.train.budget import Plan
from sslkd.train.build import Processes
from sslkd.train.state import TrainState

FORMAT = 1  # the checkpoint layout's version

# what fixes a run's data order and networks: a checkpoint resumes only a run that agrees on these
RUN_IDENTITY = ("seed", "model", "method", "data.name", "train.epochs", "train.batch_size", "train.accum_steps")


def check_compatible(stored: dict, now: dict, path: str | Path) -> None:
    """Refuse (``CheckpointError``) to resume from ``path``, written with config ``stored``, into a
    run with config ``now`` whose data order or networks would differ (``RUN_IDENTITY``)."""
    differ, leaves = [], []
    stored, now = _with_defaults(stored_config(stored)), _with_defaults(now)
    for key in RUN_IDENTITY:
        a, b = stored, now
        for part in key.split("."):
            a, b = (a or {}).get(part), (b or {}).get(part)
        if a != b:
            differ.append(key)
            leaves += _leaf_changes(key, a, b)
    if differ:
        shown = "; ".join(leaves[:6]) + ("; ..." if len(leaves) > 6 else "")
        raise CheckpointError(
            f"{path} was written with different {', '.join(differ)}; resuming would not "
            f"continue that run ({shown}). Use another output_dir (or the same settings)."
        )


def _leaf_changes(key: str, a: Any, b: Any) -> list[str]:
    """``key.sub: old -> new`` for every leaf that differs between two config values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [c for k in sorted(a.keys() | b.keys()) for c in _leaf_changes(f"{key}.{k}", a.get(k), b.get(k))]
    return [] if a == b else [f"{key}: {a!r} -> {b!r}"]


def _with_defaults(cfg: dict) -> dict:
    """``cfg`` with every key this version knows filled in (a key added since a checkpoint was
    written reads as its default); as stored if this version cannot read it."""
    try:
        return to_dict(load_config(None, [], base=cfg))
    except Exception:  # noqa: BLE001 - compare what was stored; the caller reports any difference
        return cfg


class Checkpointer:
    """A run's checkpoints: its networks (``method``) and :class:`TrainState` as full tensors,
    written atomically by the main process into ``out`` (``checkpoint-<step>.pt``, the last
    ``train.keep_last`` kept), and restored from one (``auto``: the newest that loads)."""

    def __init__(
        self, out: Path, cfg: Config, method: nn.Module, procs: Processes, sharded: bool, data: dict[str, Any]
    ) -> None:
        """``data``: what the checkpoint says of the training images (channels, size, mean, std, name)."""
        self.out, self.cfg, self.method, self.procs, self.sharded, self.data = out, cfg, method, procs, sharded, data

    def state_dict(self, state: TrainState) -> dict[str, Any]:
        """Everything a resumed run needs, as full tensors (collective when sharded)."""
        opts = state.optimizers
        opt_states = [fsdp.full_optimizer_state(o) if self.sharded else o.state_dict() for o in opts]
        saved = {
            "format": FORMAT,
            "step": state.step,
            "train_seconds": state.train_seconds,
            "plan": None if state.plan is None else dataclasses.asdict(state.plan),  # a time budget's
            "config": to_dict(self.cfg),
            "method": fsdp.full_model_state(self.method) if self.sharded else self.method.state_dict(),
            # one optimiser: its state (the layout of single-optimiser runs); several: a list
            "optimizer": opt_states[0] if len(opt_states) == 1 else opt_states,
            "scaler": state.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "skipped_files": state.skipped_files,
            "world": self.procs.world,  # the data order of a resumed epoch depends on it
            "data": dict(self.data),
        }
        if torch.cuda.is_available() and self.procs.device.type == "cuda":
            saved["rng_cuda"] = torch.cuda.get_rng_state(self.procs.device)
        return saved

    def restore(self, saved: dict[str, Any], state: TrainState) -> None:
        """Load a checkpoint's ``saved`` state into the networks and ``state``; its time budget's
        plan is kept only if the budget is the same (another budget is measured anew)."""
        if self.sharded:
            fsdp.load_model_state(self.method, saved["method"])
        else:
            self.method.load_state_dict(saved["method"])
        opts = saved["optimizer"] if isinstance(saved["optimizer"], list) else [saved["optimizer"]]
        if len(opts) != len(state.optimizers):
            raise TrainingError(f"the checkpoint has {len(opts)} optimiser states, this run {len(state.optimizers)}")
        for opt, st in zip(state.optimizers, opts):
            if self.sharded:
                fsdp.load_optimizer_state(opt, st)
            else:
                opt.load_state_dict(st)
        state.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng_cpu"])
        ranks = saved.get("rng_cpu_ranks")
        if ranks is not None and len(ranks) == self.procs.world:
            torch.set_rng_state(ranks[self.procs.rank].clone())
        if "rng_cuda" in saved and self.procs.device.type == "cuda":
            torch.cuda.set_rng_state(saved["rng_cuda"], self.procs.device)
        state.step = state.saved_step = int(saved["step"])
        state.train_seconds = float(saved.get("train_seconds", 0.0))
        plan, budget = saved.get("plan"), self.cfg.train.time_budget_minutes
        state.plan = Plan(**plan) if plan and budget and plan["budget_seconds"] == budget * 60 else None
        state.skipped_files = int(saved.get("skipped_files", 0))
        state.resumed_world = int(saved.get("world", self.procs.world))

    def save(self, state: TrainState) -> Path:
        """Write ``checkpoint-<step>.pt`` (the main process only) and keep the last ``keep_last``."""
        path = self.out / f"checkpoint-{state.step}.pt"
        state.saved_step = state.step
        # every process's RNG state (drop-path streams), so that each resumes its own
        rngs = gather_batch(torch.get_rng_state()[None].to(self.procs.device), differentiable=False).cpu()
        saved = self.state_dict(state)  # on every process: gathering shards is collective
        if self.procs.is_main:
            ckpt.save_atomic({**saved, "rng_cpu_ranks": rngs}, path)
            ckpt.prune(self.out, self.cfg.train.keep_last)
        return path

    def resume(self, spec: str | None, state: TrainState) -> Path | None:
        """Restore from ``spec``: a checkpoint path, ``auto`` (the newest valid one in the output
        folder) or None (a new run: refused where checkpoints exist)."""
        if not spec:
            if from_main_process(bool(ckpt.list_checkpoints(self.out))):  # every process refuses, or none
                raise TrainingError(
                    f"{self.out} already holds checkpoints; resume with --resume auto or choose another output_dir"
                )
            return None
        if spec == "auto":
            found = ckpt.find_resumable(self.out) if self.procs.is_main else None
            chosen = from_main_process(None if found is None else str(found[0]))
            if chosen is None:
                return None
            path = Path(chosen)
            saved = found[1] if found is not None else ckpt.load(path)
        else:
            path, saved = Path(spec), ckpt.load(spec)
        check_compatible(saved["config"], to_dict(self.cfg), path)
        self.restore(saved, state)
        if self.procs.is_main:
            for newer in ckpt.list_checkpoints(self.out):  # a resumed past must not outrank the new run
                if int(newer.stem.split("-")[1]) > state.step:
                    newer.unlink()
        if is_distributed():
            torch.distributed.barrier()
        return path
