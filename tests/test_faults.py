"""Fault injection (issue 31): every row of the faults table in ``docs/training.md`` is produced
here for real (a full disk through torch's own failure, two processes, signals, a diverging
run, hostile files) and its "what you see" fragments and exit status checked against the
table; each scenario also checks what the table says is kept."""

import errno
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from sslkd import checkpoint as ckpt
from sslkd.cli import main
from sslkd.data import get_dataset
from sslkd.data.folder import scan_folder
from sslkd.train import runlock

DOC = Path(__file__).parent.parent / "docs" / "training.md"
TINY = {
    "device": "cpu",
    "data": {"name": "synthetic", "img_size": 16, "num_workers": 0},
    "aug": {"local_crops_number": 2, "local_crops_size": 8},
    "model": {"backbone": "vit_tiny", "patch_size": 4, "depth": 1},
    "method": {"name": "dino", "out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32},
    "train": {"epochs": 2, "batch_size": 16, "warmup_epochs": 1, "log_every": 1, "freeze_last_layer": 0},
    "eval": {"knn_every": 0},
}


def faults_table() -> list[list[str]]:
    """The rows of the table under ``### Faults`` in docs/training.md, as cells."""
    text = DOC.read_text().split("### Faults", 1)[1]
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]


def _config(tmp_path: Path, **train) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(train)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _pretrain(tmp_path: Path, out: Path, *sets: str, **train) -> list[str]:
    args = ["pretrain", "--config", str(_config(tmp_path, **train)), "--no-progress", "--set", f"output_dir={out}"]
    for s in sets:
        args += ["--set", s]
    return args


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]


# A checkpoint write that takes 60 s (torch.save sleeps first, inside the open temp file): a
# signal can then be sent while a write is known to run, on a machine of any speed.
SLOW_SAVE = (
    "import sys, time, torch; save = torch.save; "
    "torch.save = lambda *a, **k: (time.sleep(60), save(*a, **k)); "
    "from sslkd.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _start(tmp_path: Path, out: Path, *sets: str, slow_save: bool = False) -> subprocess.Popen:
    """A real ``sslkd pretrain`` process (its own session: signals reach it alone), long enough to
    be signalled mid-run."""
    args = _pretrain(tmp_path, out, "train.max_steps=400", *sets, epochs=100)
    entry = ["-c", SLOW_SAVE] if slow_save else ["-m", "sslkd"]
    return subprocess.Popen(
        [sys.executable, *entry, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_steps(proc: subprocess.Popen, out: Path, n: int) -> None:
    deadline = time.time() + 180
    while not ((out / "metrics.jsonl").is_file() and len(_steps(out)) >= n):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.1)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out + err


# ---------------------------------------------------------------------------------- scenarios
def full_disk(tmp_path, capsys, monkeypatch):
    """torch's zip writer meets ENOSPC as the kernel reports it (a RuntimeError whose context is
    the OSError), at the second checkpoint."""
    real = torch.save

    def enospc_at_step_4(obj, f, *a, **k):
        if obj.get("step") == 4:
            f.write(b"PK\x03\x04" + b"x" * 4096)
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
        return real(obj, f, *a, **k)

    out = tmp_path / "run"
    monkeypatch.setattr(ckpt.torch, "save", enospc_at_step_4)
    rc = main(_pretrain(tmp_path, out, "train.max_steps=6", ckpt_every_steps=2))
    seen = capsys.readouterr()
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2.pt"]
    assert not [p for p in out.iterdir() if ".tmp" in p.name], "the torn temp file keeps the disk full"
    assert not (out / runlock.LOCK).exists()
    monkeypatch.setattr(ckpt.torch, "save", real)  # space freed: the same command resumes
    assert main(_pretrain(tmp_path, out, "train.max_steps=6", ckpt_every_steps=2)) == 0
    assert _steps(out) == [1, 2, 3, 4, 5, 6], "metrics.jsonl holds the steps after the checkpoint twice"
    return rc, seen.out + seen.err


def second_process(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    """Two real processes: the second start on a folder in use refuses, naming the holder."""
    out = tmp_path / "run"
    first = _start(tmp_path, out)
    try:
        _wait_steps(first, out, 2)
        r = subprocess.run(
            [sys.executable, "-m", "sslkd", *_pretrain(tmp_path, out, "train.max_steps=400", epochs=100)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        before = len(_steps(out))
        _wait_steps(first, out, before + 1)  # the first run goes on
    finally:
        os.killpg(first.pid, signal.SIGTERM)
    rc, _ = _finish(first)
    assert rc == 143
    assert f"PID {first.pid} on {socket.gethostname()}" in r.stderr
    steps = _steps(out)
    assert steps == list(range(1, len(steps) + 1)), "two processes interleaved metrics.jsonl"
    return r.returncode, r.stdout + r.stderr


def stale_lock(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    """A lock left by a run killed with -9: its PID is gone on this host, the next run takes over."""
    out = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out.mkdir()
    lock = {"pid": dead.pid, "host": socket.gethostname(), "machine": runlock.machine_id(), "since": "x"}
    (out / runlock.LOCK).write_text(json.dumps(lock))
    rc = main(_pretrain(tmp_path, out, "train.max_steps=2"))
    seen = capsys.readouterr()
    assert not (out / runlock.LOCK).exists()
    return rc, seen.out + seen.err


def diverged(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    """A real diverging run: an absurd learning rate."""
    out = tmp_path / "run"
    rc = main(_pretrain(tmp_path, out, "train.max_steps=16", base_lr=1e6, warmup_epochs=0.15, ckpt_every_steps=1))
    seen = capsys.readouterr()
    kept = ckpt.list_checkpoints(out)
    assert kept and f"{kept[0].name}" in seen.err and len(seen.err.strip().splitlines()) == 1
    state = ckpt.load(kept[0])
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())
    return rc, seen.out + seen.err


def _signalled(tmp_path, signals: list[int], *sets: str) -> tuple[int, str, Path]:
    out = tmp_path / "run"
    proc = _start(tmp_path, out, *sets)
    try:
        _wait_steps(proc, out, 2)
        for i, s in enumerate(signals):
            if i:
                time.sleep(0.3)
            os.killpg(proc.pid, s)
    finally:
        rc, text = _finish(proc)
    assert "Traceback" not in text, text[-3000:]
    return rc, text, out


def ctrl_c_once(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    rc, text, out = _signalled(tmp_path, [signal.SIGINT])
    step = int(re.search(r"interrupted at step (\d+)", text).group(1))
    assert ckpt.list_checkpoints(out)[0].name == f"checkpoint-{step}.pt"
    assert _steps(out)[-1] == step
    return rc, text


def sigterm(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    rc, text, out = _signalled(tmp_path, [signal.SIGTERM])
    assert ckpt.list_checkpoints(out)
    return rc, text


def ctrl_c_twice(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    """The second Ctrl-C lands while the checkpoint the first one asked for is being written (a
    slowed writer, its temp file open: timing a second signal against a real write lost the race
    on a fast machine, where step, checkpoint and exit took under 0.3 s)."""
    out = tmp_path / "run"
    proc = _start(tmp_path, out, slow_save=True)
    try:
        _wait_steps(proc, out, 2)
        os.killpg(proc.pid, signal.SIGINT)
        deadline = time.time() + 60
        while not [p for p in out.iterdir() if ".tmp" in p.name]:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
    finally:
        rc, text = _finish(proc)
    assert "Traceback" not in text, text[-3000:]
    err = [line for line in text.splitlines() if line.startswith("sslkd:")]
    assert len(err) == 1, text[-2000:]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert not ckpt.list_checkpoints(out)  # the write it aborted is not there, torn or whole
    return rc, text


def torn_checkpoint(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    out = tmp_path / "run"
    assert main(_pretrain(tmp_path, out, "train.max_steps=4", ckpt_every_steps=2)) == 0
    newest = ckpt.list_checkpoints(out)[0]
    newest.write_bytes(newest.read_bytes()[:1000])  # the machine went down mid-write
    capsys.readouterr()
    with pytest.warns(UserWarning) as warned:
        rc = main(_pretrain(tmp_path, out, "train.max_steps=6", ckpt_every_steps=2))
    seen = capsys.readouterr()
    assert _steps(out) == [1, 2, 3, 4, 5, 6]
    return rc, seen.out + seen.err + "".join(str(w.message) for w in warned)


def _photo_tree(root: Path, n: int = 6) -> Path:
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        (root / "val" / c).mkdir(parents=True)
        for i in range(n):
            color = (40 * i, 100 if c == "a" else 200, 30)
            Image.new("RGB", (20, 16), color).save(root / "train" / c / f"{i}.png")
            Image.new("RGB", (20, 16), color).save(root / "val" / c / f"{i}.png")
    return root


def _train_on(tmp_path, root: Path, *sets: str) -> list[str]:
    """A run of 3 steps of 4 images over the 12 training images of ``root``: every file is read."""
    return _pretrain(
        tmp_path,
        tmp_path / "run",
        "data.name=imagefolder",
        f"data.root={root}",
        "data.in_memory=false",
        "train.max_steps=3",
        *sets,
        batch_size=4,
    )


def undecodable_image(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    root = _photo_tree(tmp_path / "photos")
    (root / "train" / "a" / "5.png").write_bytes(b"not a png")
    rc = main(_train_on(tmp_path, root))
    seen = capsys.readouterr()
    assert "5.png" in seen.err
    assert main(_train_on(tmp_path, root, "data.on_corrupt=skip", "output_dir=" + str(tmp_path / "skip"))) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped_files"] == 1
    return rc, seen.out + seen.err


def nothing_decodes(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    """Every file bad under skip: the loader's worker gives up after 16 in a row; its error
    reaches the user as the one line it is, not as the worker's traceback."""
    root = _photo_tree(tmp_path / "photos")
    for f in (root / "train").rglob("*.png"):
        f.write_bytes(b"not a png")
    rc = main(_train_on(tmp_path, root, "data.on_corrupt=skip", "data.num_workers=1"))
    seen = capsys.readouterr()
    assert len(seen.err.strip().splitlines()) == 1 and "Traceback" not in seen.err, seen.err
    return rc, seen.out + seen.err


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` pixels, a few bytes long."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def huge_header(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    """60000 x 60000 declared in 60 bytes, where the header sampling reads: refused as a corrupt
    file, named, in one line; skipped under skip. A 9 Mpx header is refused under a 4 Mpx limit
    and read under a 10 Mpx one (then it fails to decode as the truncated file it is, named)."""
    root = _photo_tree(tmp_path / "photos")
    (root / "train" / "a" / "0.png").write_bytes(png_header(60000, 60000))
    rc = main(_train_on(tmp_path, root))
    seen = capsys.readouterr()
    assert "0.png" in seen.err and len(seen.err.strip().splitlines()) == 1
    assert main(_train_on(tmp_path, root, "data.on_corrupt=skip", "output_dir=" + str(tmp_path / "skip"))) == 0
    capsys.readouterr()
    (root / "train" / "a" / "0.png").write_bytes(png_header(3000, 3000))  # 9 Mpx: the limit is the key's
    assert main(_train_on(tmp_path, root, "data.max_pixels=4000000", "output_dir=" + str(tmp_path / "a"))) == 1
    assert "raise data.max_pixels" in capsys.readouterr().err
    assert main(_train_on(tmp_path, root, "data.max_pixels=10000000", "output_dir=" + str(tmp_path / "b"))) == 1
    err = capsys.readouterr().err
    assert "0.png" in err and "max_pixels" not in err
    return rc, seen.out + seen.err


def link_loop(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    root = _photo_tree(tmp_path / "photos")
    (root / "train" / "a" / "loop").symlink_to(root / "train" / "a", target_is_directory=True)
    with pytest.warns(UserWarning) as warned:
        rc = main(_train_on(tmp_path, root))
    seen = capsys.readouterr()
    assert len(_steps(tmp_path / "run")) == 3
    return rc, seen.out + seen.err + "".join(str(w.message) for w in warned)


def odd_file_names(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    """Newline, tab and non-UTF-8 bytes in file names round-trip through the index cache."""
    root = _photo_tree(tmp_path / "photos")
    names = ["new\nline.png", "tab\there.png", os.fsdecode(b"caf\xe9.png")]
    for i, name in enumerate(names):
        Image.new("RGB", (20, 16), (9 * i, 9, 9)).save(root / "train" / "b" / name, format="PNG")
    for _ in range(2):  # the scan, then the cached index
        index = scan_folder(root / "train")
        assert {n for n in names} <= {p.split("/", 1)[1] for p in index.paths}
    ds = get_dataset("imagefolder", "train", root=str(root), in_memory=False)
    assert len(ds) == 15 and all(ds[i][0].shape == (3, 16, 20) for i in range(len(ds)))
    rc = main(_train_on(tmp_path, root))
    seen = capsys.readouterr()
    return rc, seen.out + seen.err


def used_export_folder(tmp_path, capsys, monkeypatch):  # noqa: ARG001
    run, out = tmp_path / "run", tmp_path / "export"
    assert main(_pretrain(tmp_path, run, "train.max_steps=1")) == 0
    assert main(["export", str(run), "--out", str(out)]) == 0
    before = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    rc = main(["export", str(run), "--out", str(out)])
    seen = capsys.readouterr()
    assert (out / "model.safetensors").read_bytes() == before
    return rc, seen.out + seen.err


SCENARIOS = {
    "full disk while writing a checkpoint": full_disk,
    "a second process on the same run folder": second_process,
    "a lock left by a killed run": stale_lock,
    "a loss that becomes non-finite": diverged,
    "Ctrl-C": ctrl_c_once,
    "SIGTERM (docker stop, Slurm)": sigterm,
    "Ctrl-C twice": ctrl_c_twice,
    "a torn newest checkpoint (kill -9, power cut)": torn_checkpoint,
    "an undecodable image": undecodable_image,
    "no image of the folder decodes (under skip)": nothing_decodes,
    "an image header declaring 60000 x 60000 pixels": huge_header,
    "a symlink loop in the image folder": link_loop,
    "file names with a newline, a tab, non-UTF-8 bytes": odd_file_names,
    "export into a folder already used": used_export_folder,
}


def test_every_fault_of_the_table_has_a_scenario():
    assert [r[0] for r in faults_table()] == list(SCENARIOS)


@pytest.mark.parametrize("row", faults_table(), ids=[r[0] for r in faults_table()])
def test_fault(row, tmp_path, capsys, monkeypatch):
    fault, seen, *_ = row
    rc, text = SCENARIOS[fault](tmp_path, capsys, monkeypatch)
    status = re.search(r"exit (\d+)", seen)
    assert rc == (int(status.group(1)) if status else 0), text[-3000:]
    for fragment in re.findall(r"`([^`]+)`", seen):
        assert fragment in text, f"{fragment!r} not in:\n{text[-3000:]}"


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="mounting a tmpfs needs root")
def test_a_real_full_tmpfs_leaves_no_temp_file(tmp_path):
    """The patched writer above mimics this: a real 1 MiB tmpfs and a 4 MiB checkpoint."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount refused here")
    try:
        (mnt / "checkpoint-1.pt").write_bytes(b"old")
        with pytest.raises(ckpt.CheckpointError, match=r"disk full writing checkpoint-2.pt in .*about 4.0 MiB"):
            ckpt.save_atomic({"format": 1, "w": torch.zeros(2**20)}, mnt / "checkpoint-2.pt")
        assert sorted(p.name for p in mnt.iterdir()) == ["checkpoint-1.pt"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_live_holder_is_never_taken_over_and_a_silent_node_is(tmp_path):
    """This machine's holder: alive -> refused however old its heartbeat (a suspended laptop);
    another node's lock: taken over once its heartbeat is older than STALE_S."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / runlock.LOCK
        rec = {"pid": sleeper.pid, "host": socket.gethostname(), "machine": runlock.machine_id(), "since": "x"}
        lock.write_text(json.dumps(rec))
        os.utime(lock, (time.time() - 3600, time.time() - 3600))
        with pytest.raises(runlock.RunFolderBusy, match=f"PID {sleeper.pid}"):
            runlock.acquire(tmp_path)
        lock.write_text(json.dumps({**rec, "host": "node7", "machine": "node7|boot|ns"}))
        os.utime(lock, (time.time() - 60, time.time() - 60))
        with pytest.raises(runlock.RunFolderBusy, match="on node7"):  # a minute of silence: still alive
            runlock.acquire(tmp_path)
        os.utime(lock, (time.time() - 3600, time.time() - 3600))
        said = []
        me = runlock.acquire(tmp_path, said.append)
        assert "taking over the lock of PID" in said[0] and json.loads(lock.read_text()) == me
        runlock.release(tmp_path, me)
        assert not lock.exists()
    finally:
        sleeper.kill()
