"""One training process per run folder: a lock file (``<run>/.lock``) held by the run's main
process, so that a second start on the same folder refuses instead of interleaving metrics and
deleting the other's checkpoints.

The lock holds the holder's PID, host and start time; a thread refreshes its mtime every
:data:`HEARTBEAT_S` seconds. A lock is stale, and taken over, when its holder is known dead (same
host, no such PID) or its heartbeat is older than :data:`STALE_S` (a killed run on another node
of a shared file system)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sslkd.distributed import from_main_process
from sslkd.errors import TrainingError

LOCK = ".lock"
HEARTBEAT_S = 20.0
STALE_S = 120.0  # six missed heartbeats


class RunFolderBusy(TrainingError):
    """Another live process trains in this run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock's record, None when there is none; an unreadable record reads as a dead holder."""
    try:
        rec = json.loads(path.read_text())
        return rec if isinstance(rec, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _stale(path: Path, rec: dict) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if not rec:  # unreadable: torn by a crash, or being written this instant
        return age > 2.0
    if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int) and not _alive(rec["pid"]):
        return True
    return age > STALE_S


def _create(path: Path, rec: dict) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(rec, f)
    return True


def acquire(folder: Path, say=print) -> dict:
    """Take ``folder``'s lock (taking over a stale one, said through ``say``); returns our record.
    Raises :class:`RunFolderBusy` naming a live holder."""
    path = folder / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        if _create(path, me):
            time.sleep(0.05)  # two takers of one stale lock: the last writer wins, the other sees it
            if _holder(path) == me:
                return me
        rec = _holder(path)
        if rec is None:
            continue
        if not _stale(path, rec):
            raise RunFolderBusy(
                f"{folder} is in use by PID {rec.get('pid')} on {rec.get('host')} (since {rec.get('since')}); "
                f"wait for it to end, stop it, or choose another output_dir"
            )
        say(f"{folder}: taking over the lock of PID {rec.get('pid')} on {rec.get('host')} (no longer running)")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    raise RunFolderBusy(f"{folder}: could not take the run lock ({path}); another process keeps taking it")


def release(folder: Path, me: dict) -> None:
    """Remove the lock if it is still ours."""
    path = folder / LOCK
    if _holder(path) == me:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def run_lock(folder: Path, enabled: bool = True, say=print) -> Iterator[None]:
    """Hold ``folder``'s lock with a heartbeat where ``enabled`` (the main process; collective: a
    refusal stops every process)."""
    me, busy = None, None
    if enabled:
        try:
            me = acquire(folder, say)
        except RunFolderBusy as e:
            busy = str(e)
    busy = from_main_process(busy)
    if busy:
        raise RunFolderBusy(busy)
    if me is None:
        yield
        return
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(folder / LOCK)

    thread = threading.Thread(target=beat, name="sslkd-run-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        release(folder, me)
