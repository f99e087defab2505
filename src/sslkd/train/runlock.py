"""One training process per run folder: a lock file (``<run>/.lock``) held by the run's main
process, so that a second start on the same folder refuses instead of interleaving metrics and
deleting the other's checkpoints.

The lock holds the holder's PID, machine and start time; a thread refreshes its mtime every
:data:`HEARTBEAT_S` seconds. A lock of this machine (same host name, boot and PID namespace) is
stale exactly when its PID is gone: a live holder is never taken over, however long it sleeps. A
lock of another machine (a node of a shared file system) is stale when its heartbeat is older
than :data:`STALE_S`."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
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


def machine_id() -> str:
    """This machine as PIDs see it: host name, boot, PID namespace (containers sharing a host
    name but not their PIDs differ)."""
    parts = [socket.gethostname()]
    for f in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        with contextlib.suppress(OSError):
            parts.append(Path(f).read_text().strip() if "boot" in f else str(os.stat(f).st_ino))
    return "|".join(parts)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock's record, None when there is none; an unreadable record reads as ``{}``."""
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
    if rec.get("machine") == machine_id() and isinstance(rec.get("pid"), int):
        return not _alive(rec["pid"]) or rec["pid"] == os.getpid()
    return age > STALE_S


def _create(path: Path, rec: dict) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(rec, f)
    except BaseException:  # a full disk: no empty lock left behind
        path.unlink(missing_ok=True)
        raise
    return True


def acquire(folder: Path, say=print) -> dict:
    """Take ``folder``'s lock (taking over a stale one, said through ``say``); returns our record.
    Raises :class:`RunFolderBusy` naming a live holder."""
    path = folder / LOCK
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "machine": machine_id(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "token": secrets.token_hex(8),
    }
    for _ in range(3):
        if _create(path, me):
            time.sleep(0.05)  # a taker of the same stale lock that unlinked ours: seen here
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
        if _holder(path) == rec:  # still the stale one (another taker may have replaced it)
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
    refusal, or a lock that cannot be written, stops every process)."""
    me, busy = None, None
    if enabled:
        try:
            me = acquire(folder, say)
        except RunFolderBusy as e:
            busy = str(e)
        except OSError as e:  # a read-only or full folder: said on every process, not a hang
            busy = f"{folder}: cannot write the run lock: {e}"
    done = threading.Event()
    try:
        busy = from_main_process(busy)
        if busy:
            raise RunFolderBusy(busy)
        if me is not None:

            def beat() -> None:  # stops if the lock is no longer ours (taken over)
                while not done.wait(HEARTBEAT_S) and _holder(folder / LOCK) == me:
                    with contextlib.suppress(OSError):
                        os.utime(folder / LOCK)

            threading.Thread(target=beat, name="sslkd-run-lock", daemon=True).start()
        yield
    finally:
        done.set()
        if me is not None:
            release(folder, me)
