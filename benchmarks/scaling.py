"""Scaling report: how the iBOT training step's time and memory grow with batch size, number of
local crops, image size (token count), and how RKD-A's cost grows with its batch.

Each point varies one axis of a base configuration (`sslkd bench` defaults: iBOT, ViT-Tiny/4,
32x32, 2 + 6 crops of 16 px, out_dim 8192; base batch `--base-batch`) and runs in a fresh
process, so its peak memory is its own: CUDA's peak allocation on a GPU, the process's max RSS on
the CPU (which includes ~0.5 GB of Python + torch). RKD-A alone (forward + backward at
`--rkd-dim`) comes from benchmarks/rkd_memory.py's measurement. Writes JSON lines and a PNG:

    python benchmarks/scaling.py --out benchmarks/results/scaling_cpu      # ~15 min on 2 CPU cores
    python benchmarks/scaling.py --device cuda --base-batch 256 --batches 64 128 256 512 1024 \\
        --rkd-batches 128 256 512 1024 --out benchmarks/results/scaling_h100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def bench(args, **axes) -> dict:
    cfg = {"batch": args.base_batch, "local_crops": 6, "img": 32, **axes}
    cmd = [
        sys.executable,
        "-m",
        "sslkd",
        "bench",
        "--steps",
        str(args.steps),
        "--data-batches",
        "1",
        "--device",
        args.device,
        "--precision",
        args.precision,
    ]
    for k, v in cfg.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    mem = r["peak_mem_mb"] if r["peak_mem_mb"] is not None else r["max_rss_mb"]
    return {
        "axis": next(iter(axes)),
        **cfg,
        "step_s": r["step_s"],
        "img_per_s": r["img_per_s"],
        "gflop_per_img": r["gflop_per_img"],
        "peak_fraction": r["peak_fraction"],
        "mem_mb": mem,
        "device": r["device"],
    }


def rkd(args, batch: int) -> dict:
    code = (
        f"import json,sys; sys.path.insert(0, {str(HERE)!r}); import rkd_memory as m; "
        f"print(json.dumps(m.one('angle', {batch:d}, {args.rkd_dim:d}, {args.device!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"RKD-A at batch {batch} failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout)
    return {
        "axis": "rkd_batch",
        "batch": batch,
        "step_s": r["seconds"],
        "mem_mb": r["peak_extra_mb"],
        "dim": args.rkd_dim,
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = [
        ("batch", "batch", "batch size"),
        ("local_crops", "local_crops", "local crops (16 px)"),
        ("img", "img", "image size (patch 4: (img/4)^2 tokens)"),
        ("rkd_batch", "batch", "RKD-A batch (loss alone)"),
    ]
    fig, ax = plt.subplots(2, 4, figsize=(16, 6.5))
    for i, (axis, key, label) in enumerate(axes):
        pts = sorted((r for r in rows if r["axis"] == axis), key=lambda r: r[key])
        if not pts:
            continue
        x = [r[key] for r in pts]
        ax[0, i].plot(x, [r["step_s"] for r in pts], "o-")
        ax[1, i].plot(x, [r["mem_mb"] for r in pts], "o-", color="tab:red")
        ax[0, i].set_title(label)
        ax[1, i].set_xlabel(label)
        for a in ax[:, i]:
            a.grid(alpha=0.3)
            if axis in ("batch", "rkd_batch"):
                a.set_xscale("log", base=2)
                a.set_yscale("log")
    ax[0, 0].set_ylabel("step time (s)")
    ax[1, 0].set_ylabel("peak memory (MB)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--base-batch", type=int, default=32)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--crops", type=int, nargs="+", default=[0, 2, 6, 10])
    p.add_argument("--imgs", type=int, nargs="+", default=[16, 24, 32, 48])
    p.add_argument("--rkd-batches", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    p.add_argument("--rkd-dim", type=int, default=8192)
    p.add_argument("--out", default="benchmarks/results/scaling")
    args = p.parse_args()
    rows: list[dict] = []
    points = (
        [dict(batch=b) for b in args.batches]
        + [dict(local_crops=c) for c in args.crops if c != 6]
        + [dict(img=s, local_img=s // 2) for s in args.imgs if s != 32]
    )
    for axes in points:
        rows.append(bench(args, **axes))
        print(json.dumps(rows[-1]), flush=True)
    base = next(r for r in rows if r["axis"] == "batch" and r["batch"] == args.base_batch)
    for r in (dict(base, axis="local_crops"), dict(base, axis="img")):  # the base point on every axis
        rows.append(r)
    for b in args.rkd_batches:
        rows.append(rkd(args, b))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot(
        rows,
        out.with_suffix(".png"),
        f"iBOT ViT-Tiny/4 step on {base['device']} ({args.precision}); "
        f"base: batch {args.base_batch}, 32 px, 2 + 6 crops",
    )
    print(f"wrote {out.with_suffix('.jsonl')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
