"""Resuming a run: a checkpoint continues only the run that wrote it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sslkd.config import load_config, to_dict
from sslkd.errors import CheckpointError

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
