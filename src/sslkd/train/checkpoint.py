"""Checkpoints: written atomically (temp file, fsync, rename), the last K kept, loaded with
``weights_only=True`` so that a checkpoint cannot run code."""

from __future__ import annotations

import errno
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read."""


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` to ``path`` so that ``path`` is either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise CheckpointError(f"disk full while writing {path}; free space and resume "
                                  f"(the previous checkpoints are intact)") from e
        raise CheckpointError(f"cannot write checkpoint {path}: {e}") from e
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save's zip, or a legacy pickle
        raise CheckpointError(f"{path}: not a checkpoint file (a PyTorch checkpoint is a zip archive or a pickle; "
                              f"this starts with {head!r})")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line), "")
        raise CheckpointError(f"{path}: refused: it holds pickled objects other than tensors and plain "
                              f"containers, which could run code on loading; sslkd loads weights only"
                              + (f" ({why[:200]})" if why else "")) from e
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable or corrupt checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(f"{path}: not an sslkd checkpoint")
    return obj


def list_checkpoints(folder: str | Path) -> list[Path]:
    """``checkpoint-<step>.pt`` files in ``folder``, newest (highest step) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune(folder: str | Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` checkpoints; remove temp files of writes torn by a crash."""
    for old in list_checkpoints(folder)[keep_last:]:
        old.unlink(missing_ok=True)
    for torn in Path(folder).glob(".checkpoint-*.pt.tmp*"):
        if not torn.name.endswith(f".tmp{os.getpid()}"):
            torn.unlink(missing_ok=True)


def find_resumable(folder: str | Path) -> tuple[Path, dict] | None:
    """Newest checkpoint in ``folder`` that loads; a corrupt newer one is skipped with a warning."""
    for path in list_checkpoints(folder):
        try:
            return path, load(path)
        except CheckpointError as e:
            warnings.warn(f"skipping {e}; falling back to the previous checkpoint")
    return None


# what fixes a run's data order and networks: a checkpoint resumes only a run that agrees on these
RUN_IDENTITY = ("seed", "model", "method", "data.name", "train.epochs", "train.batch_size", "train.accum_steps")


def check_compatible(stored: dict, now: dict, path: str | Path) -> None:
    """Refuse (``CheckpointError``) to resume from ``path``, written with config ``stored``, into a
    run with config ``now`` whose data order or networks would differ (``RUN_IDENTITY``)."""
    differ, leaves = [], []
    stored, now = _with_defaults(stored), _with_defaults(now)
    for key in RUN_IDENTITY:
        a, b = stored, now
        for part in key.split("."):
            a, b = (a or {}).get(part), (b or {}).get(part)
        if a != b:
            differ.append(key)
            leaves += _leaf_changes(key, a, b)
    if differ:
        shown = "; ".join(leaves[:6]) + ("; ..." if len(leaves) > 6 else "")
        raise CheckpointError(f"{path} was written with different {', '.join(differ)}; resuming would not "
                              f"continue that run ({shown}). Use another output_dir (or the same settings).")


def _leaf_changes(key: str, a: Any, b: Any) -> list[str]:
    """``key.sub: old -> new`` for every leaf that differs between two config values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [c for k in sorted(a.keys() | b.keys()) for c in _leaf_changes(f"{key}.{k}", a.get(k), b.get(k))]
    return [] if a == b else [f"{key}: {a!r} -> {b!r}"]


def _with_defaults(cfg: dict) -> dict:
    """``cfg`` with every key this version knows filled in (a key added since a checkpoint was
    written reads as its default); as stored if this version cannot read it."""
    from sslkd.config import load_config, to_dict
    try:
        return to_dict(load_config(None, [], base=cfg))
    except Exception:  # noqa: BLE001 - compare what was stored; the caller reports any difference
        return cfg
