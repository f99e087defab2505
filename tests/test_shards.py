"""WebDataset shards: packing (resumable), reading, every rank x worker its own part, two torchrun nodes."""

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import webdataset
from PIL import Image

from sslkd.autoconfig import auto_config
from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import DatasetError, get_dataset, held_out
from sslkd.data import pack as pack_mod
from sslkd.data.augment import MultiCropDataset, SeededEpochSampler
from sslkd.data.folder import decode, pil_to_uint8, scan_folder
from sslkd.data.shards import ShardDataset
from sslkd.train.inputs import epoch_loader


def make_imagenet(root: Path, classes=3, per_class=8, val_per_class=2, seed=0) -> Path:
    """ImageNet's layout (``train/nXXXXXXXX/nXXXXXXXX_i.JPEG``, ``val/...``) of mixed-size JPEGs."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes if n else 0):
            wnid = f"n{1440764 + c:08d}"
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = int(rng.integers(40, 97)), int(rng.integers(40, 97))
                im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                im.save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = make_imagenet(tmp_path_factory.mktemp("imagenet"))
    (root / "train" / "n01440764" / "broken.JPEG").write_bytes(b"this is not a JPEG")
    out = tmp_path_factory.mktemp("shards")
    assert main(["data", "pack", str(root), "--out", str(out), "--shard-size", "4", "--quiet"]) == 0
    return root, out


def test_pack_keeps_images_labels_and_names_the_file_left_out(packed, capsys):
    root, out = packed
    info = json.loads((out / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] == 24 and info["splits"]["val"]["num_samples"] == 6
    lengths = info["splits"]["train"]["shard_lengths"]
    assert len(lengths) == 7 and sum(lengths) == 24  # 25 files in shards of 4, one left out
    assert info["sslkd"]["skipped"] == {"train": 1, "val": 0}
    assert "broken.JPEG" in info["sslkd"]["skipped_files"]["train"][0]
    train = get_dataset("shards", "train", root=out)
    test = held_out("shards", train, root=out)
    assert (len(train), len(test), train.classes) == (24, 6, [f"n{1440764 + c:08d}" for c in range(3)])
    # every image is its source file's bytes under its class label: compare decoded pixels
    sources = {}
    for p in (root / "train").rglob("*.JPEG"):
        if p.name != "broken.JPEG":
            sources[p.read_bytes()] = p
    for i in range(len(train)):
        data, _ = train.read(i)
        src = sources.pop(data)
        assert train.classes[train.labels[i]] == src.parent.name
        assert torch.equal(train[i][0], pil_to_uint8(decode(src, 3, train.draft)))
    assert not sources  # each kept image exactly once
    # the shards are WebDataset's: its reader sees the same samples and labels
    samples = list(webdataset.WebDataset([str(p) for p in sorted(out.glob("train-*.tar"))], shardshuffle=False))
    assert len(samples) == 24 and all(int(s["cls"]) in (0, 1, 2) for s in samples)
    assert sorted(s["jpg"] for s in samples) == sorted(train.read(i)[0] for i in range(24))


def test_pack_resumes_where_it_was_interrupted(packed, tmp_path, monkeypatch):
    root, fresh = packed
    out = tmp_path / "shards"
    # interrupt right after the shard holding the bad file: its name must survive the resumption
    index = scan_folder(root / "train")
    order = list(np.random.default_rng(0).permutation(len(index.paths)))
    cut = order.index(index.paths.index("n01440764/broken.JPEG")) // 4 + 1
    write = pack_mod.write_shard
    calls = []

    def interrupted(*a, **k):
        if len(calls) == cut:
            raise KeyboardInterrupt
        calls.append(a[3])
        return write(*a, **k)

    monkeypatch.setattr(pack_mod, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack_mod.pack_folder(root, out, shard_size=4, progress=False)
    for attempt in (lambda: get_dataset("shards", "train", root=out), lambda: auto_config("dino", str(out))):
        with pytest.raises(DatasetError, match="interrupted"):
            attempt()
    done = {p: p.stat().st_mtime_ns for p in calls}
    calls.clear()
    monkeypatch.setattr(pack_mod, "write_shard", lambda *a, **k: calls.append(a[3]) or write(*a, **k))
    pack_mod.pack_folder(root, out, shard_size=4, progress=False)
    assert len(calls) == 9 - cut and not set(calls) & set(done)  # the finished shards were kept, not rewritten
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())
    for p in [*sorted(fresh.glob("*.tar")), *sorted(fresh.glob("*.index.npy")), fresh / "_info.json"]:
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name  # as if never interrupted
    assert "broken.JPEG" in json.loads((out / "_info.json").read_text())["sslkd"]["skipped_files"]["train"][0]
    assert not [p for p in out.iterdir() if p.suffix in (".tmp", ".json") and p.name[0] != "_"]
    assert not list(out.glob("*.idx.npy"))
    for other in ({"shard_size": 5}, {"shard_size": None, "shard_mb": 1.0}, {"seed": 1}):
        with pytest.raises(DatasetError, match="another folder or other options"):
            pack_mod.pack_folder(root, out, **{"shard_size": 4, **other, "progress": False})


def test_shard_files_are_closed_and_workers_map_the_index(packed):
    _, out = packed
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    ds = ShardDataset(out)
    before = fds()  # with the index's memory map
    for i in range(len(ds)):
        ds.read(i)
    assert fds() == before + len(ds.files)  # one descriptor a shard, reused
    ds.close()
    assert fds() == before
    ds[0]
    del ds
    assert fds() == before - 1  # closed when the dataset goes, its memory map too
    copy = pickle.loads(pickle.dumps(ShardDataset(out)))  # as a spawned loader worker gets it
    assert isinstance(copy.index, np.memmap) and copy.read(3) == ShardDataset(out).read(3)


def test_reading_errors_name_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="sslkd data pack FOLDER"):
        get_dataset("shards", "train", root=tmp_path)
    with pytest.raises(DatasetError, match="data.root"):
        get_dataset("shards", "train")


class _Who(torch.utils.data.Dataset):
    """Item ``(index, seed)`` -> (row in the packed index, shard, loader worker id)."""

    def __init__(self, base: ShardDataset) -> None:
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, item):
        i, _ = item
        self.base.read(i)  # the file access a training item makes
        info = torch.utils.data.get_worker_info()
        return int(self.base.rows[i]), int(self.base.shard_of[i]), info.id if info else -1


def _reader(rank, world, root, out):
    cfg = load_config(None, ["data.num_workers=2", "train.batch_size=4", "seed=3"])
    data = _Who(ShardDataset(root))
    seen = {}
    for start in (0, 8):  # a whole epoch, and the same epoch resumed after 2 steps (8 images)
        seen[start] = [
            (r, s, w)
            for rows, shards, workers in epoch_loader(data, cfg, 1, start, rank, world)
            for r, s, w in zip(rows.tolist(), shards.tolist(), workers.tolist())
        ]
    out[rank] = seen


def test_two_processes_by_two_workers_read_disjoint_parts_and_resume_exactly(packed):
    _, root = packed
    out = mp.Manager().dict()
    mp.start_processes(_reader, args=(2, root, out), nprocs=2, start_method="fork")
    whole = {rank: out[rank][0] for rank in range(2)}
    rows = [r for rank in range(2) for r, _, _ in whole[rank]]
    assert sorted(rows) == list(range(24))  # the union is the dataset, nothing twice
    parts = {(rank, w): {r for r, _, w2 in whole[rank] if w2 == w} for rank in range(2) for w in range(2)}
    assert all(parts.values()) and sum(map(len, parts.values())) == 24  # four non-empty, disjoint parts
    for rank in range(2):  # shard by shard: 12 images in shards of <= 4 touch at most 5 of the 7 shards
        assert len({s for _, s, _ in whole[rank]}) <= 5
        # resumed after 2 steps of 2 x 2 images: the rest of the epoch, nothing repeated or skipped
        assert [r for r, _, _ in out[rank][8]] == [r for r, _, _ in whole[rank]][4:]


def test_shard_order_changes_every_epoch_and_every_group_stays_together():
    groups = np.repeat(np.arange(6), 5)
    orders = [list(SeededEpochSampler(30, 0, e, groups=groups)) for e in (0, 1)]
    assert [i for i, _ in orders[0]] != [i for i, _ in orders[1]]
    for order in orders:
        runs = [groups[i] for i, _ in order]
        assert sum(a != b for a, b in zip(runs, runs[1:])) == 5  # each shard read in one go
    assert len(SeededEpochSampler(30, 0, 0, start=4, rank=1, world_size=4, groups=groups)) == 7 - 4


def _read(n, world, groups=None, start=0, moved=None):
    return [
        [i for i, _ in SeededEpochSampler(n, 0, 5, start, r, world, groups, moved)] for r in range(world)
    ]  # fmt: skip


@pytest.mark.parametrize("grouped", [False, True])
def test_every_process_reads_as_many_images_and_resumes_with_another_number(grouped):
    n, groups = 103, np.repeat(np.arange(26), 4)[:103] if grouped else None
    for world in (1, 2, 3, 4):  # equal counts: no process waits in an extra collective step
        assert len({len(part) for part in _read(n, world, groups)}) == 1
    # 3 steps of a global batch of 8 by 2 processes, then resumed by 1 and by 4 processes
    before = [i for part in _read(n, 2, groups) for i in part[:12]]
    for world in (1, 4):
        if grouped:
            after = _read(n, world, groups, moved=(24, 2))
        else:
            after = [part[24 // world :] for part in _read(n, world, groups)]
        rest = [i for part in after for i in part]
        assert not set(rest) & set(before) and len(set(rest)) == len(rest)  # nothing twice
        assert len(before) + len(rest) >= n // 8 * 8  # nothing the epoch's steps needed is missing
        assert len({len(part) for part in after}) == 1


def _config(tmp_path, root, out, extra=""):
    cfg = tmp_path / f"{out.name}.yaml"
    cfg.write_text(
        f"data: {{name: shards, root: {root}, img_size: 32, num_workers: 1}}\n"
        "aug: {local_crops_number: 2, local_crops_size: 16}\n"
        "model: {backbone: vit_tiny, patch_size: 8, depth: 1}\n"
        "method: {name: dino, out_dim: 32, hidden_dim: 32, bottleneck_dim: 16}\n"
        "train: {epochs: 2, batch_size: 4, log_every: 1, ckpt_every_steps: 1, precision: fp32}\n"
        f"eval: {{knn_every: 0}}\noutput_dir: {out}\ndevice: cpu\n" + extra
    )
    return cfg


def test_training_on_shards_resumes_mid_epoch_as_if_never_stopped(packed, tmp_path):
    _, root = packed
    runs = {}
    for name, stops in (("whole", [9]), ("resumed", [3, 9])):
        out = tmp_path / name
        for steps in stops:
            args = ["pretrain", "--config", str(_config(tmp_path, root, out)), "--no-progress"]
            assert main([*args, "--set", f"train.max_steps={steps}", "--resume", "auto"]) == 0
        runs[name] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in runs["resumed"]] == list(range(1, 10))  # 6 steps an epoch: resumed in the first
    assert [r["loss"] for r in runs["resumed"]] == pytest.approx([r["loss"] for r in runs["whole"]], rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_train_one_job_on_shards(packed, tmp_path):
    _, root = packed
    out = tmp_path / "run"
    cfg = _config(tmp_path, root, out)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for steps in (2, 3):  # a job, then the same job resumed from its checkpoint (mid-epoch)
        launchers = [
            subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                 f"--node-rank={node}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                 f"--rdzv-id=job{steps}", "-m", "sslkd", "pretrain", "--config", str(cfg), "--no-progress",
                 "--set", f"train.max_steps={steps}", "--resume", "auto"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            )
            for node in (0, 1)
        ]  # fmt: skip
        logs = [p.communicate(timeout=300)[0] for p in launchers]
        assert [p.returncode for p in launchers] == [0, 0], "\n".join(log[-1500:] for log in logs)
    env_json = json.loads((out / "env.json").read_text())
    assert (env_json["processes"], env_json["nodes"]) == ("2", "2")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # written once (by global rank 0), continued after the restart
    assert (out / "checkpoint-3.pt").is_file()
    # requeued on one node with one process: the epoch goes on with the images not read yet
    args = ["pretrain", "--config", str(cfg), "--no-progress", "--set", "train.max_steps=4", "--resume", "auto"]
    assert main(args) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and json.loads((out / "env.json").read_text())["processes"] == "1"


def test_pack_reports_progress_and_a_summary(tmp_path, capsys):
    root = make_imagenet(tmp_path / "in", classes=2, per_class=3, val_per_class=0)
    assert main(["data", "pack", str(root), "--out", str(tmp_path / "sh"), "--shard-mb", "0.001"]) == 0
    captured = capsys.readouterr()
    assert "pack train" in captured.err and "img" in captured.err  # tqdm's bar
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["splits"]["train"]["images"] == 6 and summary["classes"] == 2
    assert summary["splits"]["train"]["shards"] == 6  # 1 KiB shards: one image each


def test_a_run_without_yaml_recognises_shards(packed):
    root, out = packed
    from_folder, from_shards = auto_config("dino", str(root)), auto_config("dino", str(out))
    assert from_shards["data"] == {**from_folder["data"], "name": "shards", "root": str(out)}
    assert from_shards["aug"] == from_folder["aug"] and from_shards["model"] == from_folder["model"]


def test_shards_evaluate_by_knn_and_linear_probe(packed, tmp_path, capsys):
    _, root = packed
    out = tmp_path / "run"
    args = ["pretrain", "--config", str(_config(tmp_path, root, out)), "--no-progress", "--set", "train.max_steps=1"]
    assert main(args) == 0
    for protocol in ("knn", "linear"):
        extra = ["--epochs", "2"] if protocol == "linear" else []
        assert main(["eval", protocol, str(out), "--dataset", "shards", "--root", str(root), *extra]) == 0
        assert "on shards (24 train / 6 test)" in capsys.readouterr().out  # the packed val/ split


def test_a_batch_announces_its_reads_before_reading(packed, monkeypatch):
    _, root = packed
    ds = ShardDataset(root)
    hints = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, size, advice: hints.append((off, size, advice)))
    cfg = load_config(None, ["train.batch_size=4", "seed=3"])
    data = MultiCropDataset(ds, lambda im: [im[:, :8, :8]])  # a uint8 [C, H, W] image: a corner
    batch = next(iter(epoch_loader(data, cfg, 0, 0)))
    rows = [int(ds.rows[i]) for i, _ in list(SeededEpochSampler(len(ds), 3, 0, groups=ds.shard_of))[:4]]
    want = [(int(ds.index[r]["offset"]), int(ds.index[r]["size"]), os.POSIX_FADV_WILLNEED) for r in rows]
    assert hints == want and batch[1].tolist() == [int(ds.index[r]["label"]) for r in rows]


def test_a_damaged_member_is_named_and_the_size_sampling_goes_on(packed, tmp_path):
    """Issue 31, item 4: a damaged member's header names its shard and key (it said
    ``<_io.BytesIO ...>``), and the no-YAML path's size sampling skips it."""
    import shutil

    from sslkd.data.folder import CorruptImageError

    _, out = packed
    copy = tmp_path / "shards"
    shutil.copytree(out, copy)
    ds = ShardDataset(copy)
    shard, key, offset, size, _ = ds.index[ds.rows[0]]
    with open(copy / ds.files[int(shard)], "r+b") as f:
        f.seek(int(offset))
        f.write(b"\0" * int(size))
    ds.close()
    ds = ShardDataset(copy)
    with pytest.raises(CorruptImageError, match=rf"{ds.files[int(shard)]}:{int(key):08d}"):
        ds.header_size(0)
    with pytest.raises(CorruptImageError, match=rf"{ds.files[int(shard)]}:{int(key):08d}"):
        ds[0]
    assert auto_config("dino", str(copy))["data"]["name"] == "shards"
