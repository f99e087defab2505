"""Checkpoints: written atomically (temp file, fsync, rename), the last K kept, loaded with
``weights_only=True`` so that a checkpoint cannot run code."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from sslkd.errors import CheckpointError

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` to ``path`` so that ``path`` is either the old file or the complete new one;
    a failed write leaves no temp file behind (a full disk stays as full as it was)."""
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
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if _disk_full(e):
            free = shutil.disk_usage(path.parent).free
            raise CheckpointError(
                f"disk full writing {path.name} in {path.parent}: {_mib(free)} free, a checkpoint needs "
                f"about {_mib(_nbytes(obj))}; the earlier checkpoints are intact: free space, then "
                f"rerun with --resume auto"
            ) from e
        raise CheckpointError(f"cannot write checkpoint {path}: {e}") from e
    except BaseException:  # a second Ctrl-C mid-write: no temp file left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return path


def _disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` or an exception it arose from is ENOSPC / EDQUOT."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts / lists): about a checkpoint's size."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save's zip, or a legacy pickle
        raise CheckpointError(
            f"{path}: not a checkpoint file (a PyTorch checkpoint is a zip archive or a pickle; "
            f"this starts with {head!r})"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line), "")
        raise CheckpointError(
            f"{path}: refused: it holds pickled objects other than tensors and plain "
            f"containers, which could run code on loading; sslkd loads weights only"
            + (f" ({why[:200]})" if why else "")
        ) from e
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
            warnings.warn(f"skipping {e}; falling back to the previous checkpoint", stacklevel=2)
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its newest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no checkpoint-<step>.pt in {path}")
        return found[0]
    return path
