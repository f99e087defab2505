"""Two CPU processes (gloo) launched by the test."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslkd.distributed import from_main_process, gather_batch
from sslkd.losses import FeatureQueue, RKDAngleLoss, RKDDistanceLoss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, student, teacher, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        b = len(student) // world
        s = student[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        t = teacher[rank * b : (rank + 1) * b]
        loss = sum(
            fn(gather_batch(s), gather_batch(t, differentiable=False)) for fn in (RKDDistanceLoss(), RKDAngleLoss())
        )
        loss.backward()
        q = FeatureQueue(6, student.shape[1])
        q.enqueue(t)
        out[rank] = {
            "loss": loss.detach(),
            "grad": s.grad / world,
            "queue": q.queue.clone(),  # / world: DDP's mean
            "chosen": from_main_process(f"checkpoint seen by rank {rank}"),
        }
    finally:
        dist.destroy_process_group()


def test_rkd_over_global_batch_matches_one_process():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), student, teacher, out), nprocs=2, join=True)
    s = student.clone().requires_grad_(True)
    ref = RKDDistanceLoss()(s, teacher) + RKDAngleLoss()(s, teacher)
    ref.backward()
    for rank in range(2):
        torch.testing.assert_close(out[rank]["loss"], ref.detach())
        torch.testing.assert_close(out[rank]["grad"], s.grad[rank * 4 : (rank + 1) * 4])
        # the queue took both ranks' batches in rank order, keeping the newest 6 rows
        torch.testing.assert_close(out[rank]["queue"], torch.nn.functional.normalize(teacher, dim=-1)[-6:])
        # a file-system choice (which checkpoint to resume) is rank 0's on every process
        assert out[rank]["chosen"] == "checkpoint seen by rank 0"


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_batch(x) is x


# ---- training over 2 processes equals one process with the whole batch ------------------------------

BASE = {
    "device": "cpu",
    "data": {"name": "synthetic", "img_size": 16},
    "aug": {"local_crops_number": 2, "local_crops_size": 8},
    "model": {"backbone": "vit_tiny", "patch_size": 4, "depth": 1, "drop_path_rate": 0.0},
    "method": {"name": "dino", "out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32},
    "train": {
        "epochs": 1,
        "batch_size": 16,
        "warmup_epochs": 0,
        "log_every": 1,
        "freeze_last_layer": 0,
        "max_steps": 3,
    },
}
IBOT = {"name": "ibot", "out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32, "mask_prob": 0.5}
CASES = {
    "dino": [],
    "ibot_kd": ["method=" + repr(IBOT).replace("'", '"')],
    "ibot_rkd_d": ["method=" + repr({**IBOT, "distill": {"mode": "rkd-d"}}).replace("'", '"')],
}


OTHER = {
    "mokd": [
        'method={"name": "mokd", "out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16, "thead_depth": 1, '
        '"thead_width": 64, "model2": {"backbone": "resnet18"}}',
        "aug.local_crops_number=1",
    ],
    "mae": ['method={"name": "mae"}', "aug.local_crops_number=0"],
}


def _run(case, out, extra=(), resume=None):
    from sslkd.config import load_config
    from sslkd.data import get_dataset
    from sslkd.train import Trainer

    # fp32: a CPU with AVX512-BF16 would run `precision: auto` in bf16, where equal means ~1e-2
    cfg = load_config(None, [f"output_dir={out}", "train.precision=fp32", *CASES[case], *extra], base=BASE)
    trainer = Trainer(cfg, get_dataset("synthetic", "train", img_size=16, num_samples=64), progress=False)
    trainer.fit(resume)
    return trainer


def _train_worker(rank, world, port, root, shapes):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        for case in CASES:
            _run(case, root / f"{case}_ddp")
            if case == "ibot_rkd_d":  # gradient caching under DDP (no_sync on the first micro-batch)
                _run(case, root / f"{case}_ddp_accum", ["train.accum_steps=2"])
            trainer = _run(case, root / f"{case}_fsdp", ["train.parallel=fsdp"])
            # gradients reduce-scattered once, after the last micro-batch (RKD-D: gradient caching sharded)
            _run(case, root / f"{case}_fsdp_accum", ["train.parallel=fsdp", "train.accum_steps=2"])
            if case == "dino":  # the shard this process holds of the first block's qkv weight
                qkv = trainer.method.student.backbone.vit.blocks[0].attn.qkv.weight
                shapes[rank] = (type(qkv).__name__, tuple(qkv.to_local().shape), tuple(qkv.shape))
        # the other method shapes: two models (ViT + ResNet, T-Heads), MAE's visible-patch encoder
        for name, extra in OTHER.items():
            for par in ("ddp", "fsdp"):
                _run("dino", root / f"{name}_{par}", [*extra, f"train.parallel={par}", "train.max_steps=2"])
        # FSDP, interrupted after 2 steps and resumed from its checkpoint (gathered shards -> full -> shards)
        _run(
            "ibot_kd",
            root / "ibot_kd_fsdp_resumed",
            ["train.parallel=fsdp", "train.max_steps=2", "train.ckpt_every_steps=1"],
        )
        _run(
            "ibot_kd", root / "ibot_kd_fsdp_resumed", ["train.parallel=fsdp", "train.ckpt_every_steps=1"], resume="auto"
        )
    finally:
        dist.destroy_process_group()


def _losses(out):
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_two_processes_equal_one_process_and_accumulation(tmp_path):
    """DDP and FSDP on 2 processes with half the batch each give one process's losses step by step;
    an FSDP run resumed from its checkpoint continues exactly; accumulation 2 x B/2 equals B (one
    process and FSDP), for RKD-D's batch-level relations too."""
    shapes = mp.Manager().dict()
    mp.spawn(_train_worker, args=(2, _free_port(), tmp_path, shapes), nprocs=2, join=True)
    for rank in range(2):  # FSDP really sharded: each process holds half of the rows
        assert shapes[rank] == ("DTensor", (288, 192), (576, 192))
    for name in OTHER:
        ddp, sharded = _losses(tmp_path / f"{name}_ddp"), _losses(tmp_path / f"{name}_fsdp")
        assert len(ddp) == 2 and [r["loss"] for r in sharded] == pytest.approx([r["loss"] for r in ddp], rel=1e-5)
    for case in CASES:
        _run(case, tmp_path / f"{case}_one")
        whole = _losses(tmp_path / f"{case}_one")
        terms = [k for k in whole[0] if k in ("loss", "dino", "cls", "patch", "rkd_cls", "rkd_patch")]
        runs = (
            [f"{case}_ddp", f"{case}_fsdp", f"{case}_fsdp_accum"]
            + (["ibot_kd_fsdp_resumed"] if case == "ibot_kd" else [])
            + (["ibot_rkd_d_ddp_accum"] if case == "ibot_rkd_d" else [])
        )
        for run in runs:
            got = _losses(tmp_path / run)
            assert len(whole) == len(got) == 3, run
            for a, b in zip(whole, got):
                for k in terms:
                    assert b[k] == pytest.approx(a[k], rel=1e-5), (run, a["step"], k, a[k], b[k])
        # CLS relations of RKD-D couple the whole batch: exact through gradient caching
        _run(case, tmp_path / f"{case}_accum", ["train.accum_steps=2"])
        for a, b in zip(whole, _losses(tmp_path / f"{case}_accum")):
            for k in terms:
                assert b[k] == pytest.approx(a[k], rel=1e-5), (case, "accum", a["step"], k, a[k], b[k])


def test_torchrun_pretrain_writes_once_and_resumes(tmp_path):
    import json
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "device: cpu\ndata: {name: digits, img_size: 16}\n"
        "model: {backbone: vit_tiny, patch_size: 4, depth: 1}\n"
        "method: {name: ibot, out_dim: 32, hidden_dim: 32, bottleneck_dim: 16, distill: {mode: rkd-d}}\n"
        f"train: {{epochs: 1, batch_size: 32, log_every: 1}}\noutput_dir: {tmp_path / 'run'}\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "sslkd",
        "pretrain",
        "--config",
        str(cfg),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for steps in (2, 4):
        r = subprocess.run(
            [*cmd, "--set", f"train.max_steps={steps}"], capture_output=True, text=True, timeout=300, env=env
        )
        assert r.returncode == 0, r.stderr[-2000:]
        summaries = [line for line in r.stdout.splitlines() if line.startswith("{")]
        assert len(summaries) == 1 and json.loads(summaries[0])["step"] == steps  # printed by rank 0 only
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*.pt")) == ["checkpoint-2.pt", "checkpoint-4.pt"]


def _features_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        from sslkd.data import get_dataset
        from sslkd.eval import extract_features
        from sslkd.models import build_backbone

        torch.manual_seed(0)
        bb = build_backbone("vit_tiny", 16, 4, 3, depth=1)
        ds = get_dataset("synthetic", "test", img_size=16, num_samples=37)  # odd: ranks get 19 and 18
        out[rank] = extract_features(bb, ds, ds.mean, ds.std, batch_size=8)
    finally:
        dist.destroy_process_group()


def test_feature_extraction_is_shared_across_processes():
    from sslkd.data import get_dataset
    from sslkd.eval import extract_features
    from sslkd.models import build_backbone

    out = mp.Manager().dict()
    mp.spawn(_features_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    torch.manual_seed(0)
    bb = build_backbone("vit_tiny", 16, 4, 3, depth=1)
    ds = get_dataset("synthetic", "test", img_size=16, num_samples=37)
    feats, labels = extract_features(bb, ds, ds.mean, ds.std, batch_size=8)
    for rank in range(2):
        torch.testing.assert_close(out[rank][0], feats, rtol=1e-5, atol=1e-5)
        assert torch.equal(out[rank][1], labels)
