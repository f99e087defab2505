"""Where one training step spends its time: torch.profiler's top operators (GPU kernels on CUDA,
CPU operators otherwise) for the same synthetic step ``sslkd bench`` times.

    python benchmarks/profile_step.py --backbone vit_small --batch 1024 --precision bf16
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from sslkd.bench import BenchArgs, _overrides, synthetic_dataset
from sslkd.config import load_config
from sslkd.train import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="vit_tiny")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    a = BenchArgs(backbone=args.backbone, batch=args.batch, precision=args.precision)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, _overrides(a, out) + ["data.num_workers=0"] + args.overrides)
        tr = Trainer(cfg, synthetic_dataset(2 * a.batch, a.img), progress=False)
        dev = tr.device
        views = [torch.randn(a.batch, 3, a.img, a.img, device=dev) for _ in range(2)]
        views += [torch.randn(a.batch, 3, a.local_img, a.local_img, device=dev) for _ in range(a.local_crops)]
        for _ in range(3):
            tr.train_step([views])
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(2):
                tr.train_step([views])
            if dev.type == "cuda":
                torch.cuda.synchronize()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
