"""Training-step throughput of sslkd's DINO against a plain reference loop, in the same run.

Prints one JSON line: images/s of both (one image = one original image with all its views),
achieved GFLOP/s (FLOPs counted with torch.utils.flop_counter), the fraction of this machine's
measured matmul peak, and peak memory. Synthetic inputs: the data pipeline is excluded.

    python benchmarks/throughput.py                 # ViT-Tiny/4, 32x32, batch 128, 2 global crops
    python benchmarks/throughput.py --precision bf16 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sslkd.bench import matmul_peak
from sslkd.bench import sync as _sync
from sslkd.config import load_config
from sslkd.device import autocast_dtype
from sslkd.methods import StepInfo, build_method


class RefHead(nn.Module):
    """Straightforward DINO head: MLP, normalise, weight-normed linear (torch parametrization)."""

    def __init__(self, d: int, out: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1)
        self.last.parametrizations.weight.original0.requires_grad = False

    def forward(self, x):
        return self.last(F.normalize(self.mlp(x), dim=-1))


def reference_step_fn(args, device):
    """timm ViT + a DINO loss written the obvious way (python loops over view pairs and params)."""
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=args.img,
        patch_size=args.patch,
        num_classes=0,
        dynamic_img_size=True,
        drop_path_rate=0.1,
    )
    student = nn.Sequential(vit, RefHead(192, args.out_dim, 2048, 256)).to(device)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad = False
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.04)
    center = torch.zeros(1, args.out_dim, device=device)
    dtype = autocast_dtype(args.precision, device)

    def step(views):
        nonlocal center
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            with torch.no_grad():
                t_out = teacher(torch.cat(views[:2])).float().chunk(2)
            s_out = [student(v).float() for v in views]
        loss, n = 0.0, 0
        for it, t in enumerate(t_out):
            q = F.softmax((t - center) / 0.04, dim=-1)
            for iv, s in enumerate(s_out):
                if iv == it:
                    continue
                loss = loss + torch.sum(-q * F.log_softmax(s / 0.1, dim=-1), dim=-1).mean()
                n += 1
        loss = loss / n
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(0.996).add_((1 - 0.996) * ps.detach())
            center = 0.9 * center + 0.1 * torch.cat(t_out).mean(0, keepdim=True)
        return loss

    return step


def sslkd_step_fn(args, device):
    from sslkd.train import Trainer  # noqa: F401  (engine import check)

    cfg = load_config(
        None,
        [
            f"model.backbone={args.backbone}",
            f"model.patch_size={args.patch}",
            f"method.out_dim={args.out_dim}",
            f"aug.local_crops_number={args.local_crops}",
            f"train.precision={args.precision}",
            "output_dir=/tmp/bench",
            f"train.batch_size={args.batch}",
        ],
    )
    method = build_method(cfg, 3, args.img).to(device)
    params = [p for _, p in method.trainable_parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.04, fused=device.type == "cuda")
    dtype = autocast_dtype(args.precision, device)
    info = StepInfo(0, 1.0, 100, 10)

    def step(views):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses, _ = method(views, info)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.on_optimizer_step(0.996)
        return losses["loss"]

    return step


def measure(step, views, steps: int, device) -> tuple[float, float]:
    """(seconds per step, FLOPs per step)."""
    for _ in range(2):
        step(views)
    with FlopCounterMode(display=False) as fc:
        step(views)
    flops = fc.get_total_flops()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(views)
    _sync(device)
    return (time.perf_counter() - t) / steps, flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_tiny")
    p.add_argument("--img", type=int, default=32)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--local-crops", type=int, default=0)
    p.add_argument("--local-img", type=int, default=16)
    p.add_argument("--out-dim", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    views = [torch.randn(args.batch, 3, args.img, args.img, device=device) for _ in range(2)]
    views += [
        torch.randn(args.batch, 3, args.local_img, args.local_img, device=device) for _ in range(args.local_crops)
    ]
    peak32 = matmul_peak(device, torch.float32)
    peak16 = matmul_peak(device, torch.bfloat16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    s_sec, s_flops = measure(sslkd_step_fn(args, device), views, args.steps, device)
    s_mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r_sec, r_flops = measure(reference_step_fn(args, device), views, args.steps, device)
    r_mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    peak = peak16 if args.precision == "bf16" else peak32
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "config": vars(args),
        "matmul_peak_gflops": {"fp32": round(peak32, 1), "bf16": round(peak16, 1)},
        "sslkd": {
            "img_per_s": round(args.batch / s_sec, 1),
            "step_s": round(s_sec, 4),
            "gflop_per_img": round(s_flops / args.batch / 1e9, 3),
            "gflops": round(s_flops / s_sec / 1e9, 1),
            "peak_fraction": round(s_flops / s_sec / 1e9 / peak, 3),
            "peak_mem_mb": round(s_mem / 2**20, 1) if s_mem else None,
        },
        "reference": {
            "img_per_s": round(args.batch / r_sec, 1),
            "step_s": round(r_sec, 4),
            "gflops": round(r_flops / r_sec / 1e9, 1),
            "peak_fraction": round(r_flops / r_sec / 1e9 / peak, 3),
            "peak_mem_mb": round(r_mem / 2**20, 1) if r_mem else None,
        },
        "speedup_vs_reference": round(r_sec / s_sec, 3),
        "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
