"""Checkpoints of a run and resuming from them: what a checkpoint holds (:class:`Checkpointing`,
the trainer's half that writes and reads it) and the rule that a checkpoint continues only the run
that wrote it (:func:`check_compatible`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from sslkd import checkpoint as ckpt
from sslkd.config import load_config, stored_config, to_dict
from sslkd.distributed import from_main_process, gather_batch, is_distributed
from sslkd.errors import CheckpointError, TrainingError
from sslkd.train import fsdp
from sslkd.train.budget import Plan

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


class Checkpointing:
    """The :class:`~sslkd.train.engine.Trainer`'s checkpoints: its whole state as full tensors,
    written atomically by the main process, and resuming (``auto``: the newest checkpoint that
    loads). Uses the trainer's ``method``, ``optimizers``, ``scaler``, ``step``, ``cfg``, ``out``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as full tensors (collective when sharded)."""
        opt_states = [fsdp.full_optimizer_state(o) if self.sharded else o.state_dict() for o in self.optimizers]
        state = {
            "format": FORMAT,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "plan": None if self.plan is None else dataclasses.asdict(self.plan),  # a time budget's
            "config": to_dict(self.cfg),
            "method": fsdp.full_model_state(self.method) if self.sharded else self.method.state_dict(),
            # one optimiser: its state (the layout of single-optimiser runs); several: a list
            "optimizer": opt_states[0] if len(opt_states) == 1 else opt_states,
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "skipped_files": self.skipped_files,
            "world": self.world,  # the data order of a resumed epoch depends on it
            "data": {
                "num_channels": self.train_set.num_channels,
                "img_size": self.train_set.img_size,
                "mean": list(self.train_set.mean),
                "std": list(self.train_set.std),
                "dataset": self.cfg.data.name,
            },
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.sharded:
            fsdp.load_model_state(self.method, state["method"])
        else:
            self.method.load_state_dict(state["method"])
        saved = state["optimizer"] if isinstance(state["optimizer"], list) else [state["optimizer"]]
        if len(saved) != len(self.optimizers):
            raise TrainingError(f"the checkpoint has {len(saved)} optimiser states, this run {len(self.optimizers)}")
        for opt, st in zip(self.optimizers, saved):
            if self.sharded:
                fsdp.load_optimizer_state(opt, st)
            else:
                opt.load_state_dict(st)
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        ranks = state.get("rng_cpu_ranks")
        if ranks is not None and len(ranks) == self.world:
            torch.set_rng_state(ranks[self.rank].clone())
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.step = self._saved_step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        plan, budget = state.get("plan"), self.cfg.train.time_budget_minutes
        if plan and budget and plan["budget_seconds"] == budget * 60:  # kept; another budget: measured anew
            self._apply_plan(Plan(**plan))
        self.skipped_files = int(state.get("skipped_files", 0))
        self.resumed_world = int(state.get("world", self.world))

    def save(self) -> Path:
        """Write ``checkpoint-<step>.pt`` (the main process only) and keep the last ``keep_last``."""
        path = self.out / f"checkpoint-{self.step}.pt"
        self._saved_step = self.step
        # every process's RNG state (drop-path streams), so that each resumes its own
        rngs = gather_batch(torch.get_rng_state()[None].to(self.device), differentiable=False).cpu()
        state = self.state_dict()  # on every process: gathering shards is collective
        if self.is_main:
            ckpt.save_atomic({**state, "rng_cpu_ranks": rngs}, path)
            ckpt.prune(self.out, self.cfg.train.keep_last)
        return path

    def resume(self, spec: str | None) -> Path | None:
        """``spec``: a checkpoint path, ``auto`` (newest valid in the output folder) or None."""
        if not spec:
            if from_main_process(bool(ckpt.list_checkpoints(self.out))):  # every process refuses, or none
                raise TrainingError(
                    f"{self.out} already holds checkpoints; resume with --resume auto or choose another output_dir"
                )
            return None
        if spec == "auto":
            found = ckpt.find_resumable(self.out) if self.is_main else None
            chosen = from_main_process(None if found is None else str(found[0]))
            if chosen is None:
                return None
            path = Path(chosen)
            state = found[1] if found is not None else ckpt.load(path)
        else:
            path, state = Path(spec), ckpt.load(spec)
        check_compatible(state["config"], to_dict(self.cfg), path)
        self.load_state_dict(state)
        if self.is_main:
            for newer in ckpt.list_checkpoints(self.out):  # a resumed past must not outrank the new run
                if int(newer.stem.split("-")[1]) > self.step:
                    newer.unlink()
        if is_distributed():
            torch.distributed.barrier()
        return path
