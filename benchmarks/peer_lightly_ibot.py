"""The peer: an iBOT training step built from lightly's public API, next to ``sslkd bench``'s step
on the same configuration, measured in the same run (ratios, not absolute times).

The lightly step follows lightly's own iBOT example (examples/pytorch/ibot.py): timm ViT wrapped in
``MaskedVisionTransformerTIMM``, one ``DINOProjectionHead`` shared by CLS and patch tokens,
``DINOLoss`` + ``IBOTPatchLoss`` on the masked tokens, ``random_block_mask``, AdamW,
``update_momentum`` for the EMA. Needs ``pip install -e ".[bench]"`` (lightly).

    python benchmarks/peer_lightly_ibot.py                      # ViT-Tiny/4, 32 px, batch 64, 2+6 crops
    python benchmarks/peer_lightly_ibot.py --precision bf16 --device cuda --backbone vit_small

Prints one JSON line: both images/s, both fractions of the fp32/bf16 matmul peak, and the ratio;
then ``interleaved``: the two steps alternated one at a time (``--pairs``), the steadier ratio on a
noisy machine.
On a CPU both steps run under the malloc tuning sslkd applies to CPU training (``train.tune_malloc``,
:func:`sslkd.device.tune_cpu_malloc`), set before either is timed; ``--default-malloc`` times both
under glibc's defaults instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from sslkd.bench import BenchArgs, _overrides, matmul_peak, run_bench, sync, synthetic_dataset
from sslkd.config import load_config
from sslkd.device import autocast_dtype, resolve_device, tune_cpu_malloc

TIMM = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224", "vit_base": "vit_base_patch16_224"}


def lightly_step(a: BenchArgs, device: torch.device, lr: float = 1e-4, return_models: bool = False):
    """lightly's iBOT training step on a list of views (globals first); with ``return_models`` also
    the (student, teacher) backbones, for evaluation (``peer_lightly_train.py``)."""
    from lightly.loss import DINOLoss, IBOTPatchLoss
    from lightly.models.modules import DINOProjectionHead, MaskedVisionTransformerTIMM
    from lightly.models.utils import random_block_mask, update_drop_path_rate, update_momentum

    vit = timm.create_model(
        TIMM[a.backbone], img_size=a.img, patch_size=a.patch, num_classes=0, dynamic_img_size=True, pos_embed="learn"
    )
    teacher_bb = MaskedVisionTransformerTIMM(vit=vit, antialias=False, pos_embed_initialization="skip")
    student_bb = copy.deepcopy(teacher_bb)
    update_drop_path_rate(student_bb.vit, drop_path_rate=0.1, mode="uniform")
    d = student_bb.vit.embed_dim
    student_head = DINOProjectionHead(input_dim=d, output_dim=a.out_dim, norm_last_layer=False)
    teacher_head = DINOProjectionHead(input_dim=d, output_dim=a.out_dim)
    for m in (teacher_bb, teacher_head):
        for p in m.parameters():
            p.requires_grad = False
    for m in (teacher_bb, teacher_head, student_bb, student_head):
        m.to(device)
    dino = DINOLoss(output_dim=a.out_dim, teacher_temp=0.04).to(device)
    ibot = IBOTPatchLoss(output_dim=a.out_dim, teacher_temp=0.04).to(device)
    params = list(student_bb.parameters()) + list(student_head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, fused=device.type == "cuda")
    dtype = autocast_dtype(a.precision, device)
    h = w = a.img // a.patch

    def step(views):
        glob, loc = torch.cat(views[:2]), torch.cat(views[2:])
        b = len(glob)
        # lightly's default of 4+ patches per block fails on a 4 x 4 grid (ViT/8 at 32 px): 1 there
        block = random_block_mask(size=(b, h, w), min_num_masks_per_block=4 if h * w >= 64 else 1, device=device)
        mask = glob.new_zeros((b, h * w + 1), dtype=torch.bool)
        mask[:, 1:] = block.flatten(1)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            with torch.no_grad():
                t_feat = teacher_bb.encode(glob)
                t_cls = teacher_head(t_feat[:, 0])
                t_masked = teacher_head(t_feat[mask])
            s_feat = student_bb.encode(glob, mask=mask)
            s_cls = student_head(s_feat[:, 0])
            s_masked = student_head(s_feat[mask])
            s_loc = student_head(student_bb.encode(loc)[:, 0]) if len(views) > 2 else s_cls[:0]
        s_all = torch.cat([s_cls, s_loc]).float()
        loss = dino(teacher_out=t_cls.float().chunk(2), student_out=s_all.chunk(len(views)), teacher_temp=0.04) + ibot(
            teacher_out=t_masked.float(), student_out=s_masked.float(), mask=block, teacher_temp=0.04
        )
        loss.backward()
        student_head.cancel_last_layer_gradients(1)
        opt.step()
        opt.zero_grad()
        update_momentum(student_bb, teacher_bb, m=0.996)
        update_momentum(student_head, teacher_head, m=0.996)
        return loss

    return (step, (student_bb, teacher_bb)) if return_models else step


def measure(step, views, steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds per step, FLOPs per step)."""
    for _ in range(2):
        step(views)
    with FlopCounterMode(display=False) as fc:
        step(views)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(views)
    sync(device)
    return (time.perf_counter() - t0) / steps, fc.get_total_flops()


def interleaved(lstep, a: BenchArgs, views, overrides: list[str], pairs: int, device: torch.device) -> dict:
    """Both steps alternated one at a time (ABBA order), medians of each: machine drift (other
    tenants, clocks) hits both alike, which back-to-back blocks of steps do not ensure."""
    from sslkd.train import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, _overrides(a, out) + ["data.num_workers=0"] + overrides)
        trainer = Trainer(cfg, synthetic_dataset(2 * a.batch, a.img), progress=False)
        steps = {"sslkd": lambda: trainer.train_step([views]), "lightly": lambda: lstep(views)}
        for f in steps.values():
            f()
        times: dict[str, list[float]] = {"sslkd": [], "lightly": []}
        for i in range(2 * pairs):
            name = ("sslkd", "lightly")[(i + i // 2) % 2]  # s l l s s l l s ...
            sync(device)
            t0 = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "pairs": pairs,
        "sslkd_img_per_s": round(a.batch / med["sslkd"], 2),
        "lightly_img_per_s": round(a.batch / med["lightly"], 2),
        "ratio": round(med["lightly"] / med["sslkd"], 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_tiny", choices=sorted(TIMM))
    for name, default in (
        ("img", 32),
        ("patch", 4),
        ("batch", 64),
        ("local-crops", 6),
        ("local-img", 16),
        ("out-dim", 8192),
        ("steps", 5),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="sslkd side only (lightly's example does not compile)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="sslkd config overrides"
    )
    p.add_argument("--pairs", type=int, default=6, help="alternated sslkd/lightly steps for the interleaved ratio")
    p.add_argument("--default-malloc", action="store_true", help="CPU: glibc's malloc defaults for both steps")
    args = p.parse_args()
    a = BenchArgs(
        backbone=args.backbone,
        img=args.img,
        patch=args.patch,
        batch=args.batch,
        local_crops=args.local_crops,
        local_img=args.local_img,
        out_dim=args.out_dim,
        steps=args.steps,
        precision=args.precision,
        compile=args.compile,
        device=args.device,
        data_batches=2,
    )
    device = resolve_device(args.device)
    malloc = "n/a"
    if device.type == "cpu":
        malloc = "default" if args.default_malloc or not tune_cpu_malloc() else "tuned"
        if args.default_malloc:
            args.overrides.append("train.tune_malloc=false")
    torch.manual_seed(0)
    views = [torch.randn(a.batch, 3, a.img, a.img, device=device) for _ in range(2)]
    views += [torch.randn(a.batch, 3, a.local_img, a.local_img, device=device) for _ in range(a.local_crops)]
    peak = matmul_peak(device, torch.bfloat16 if autocast_dtype(a.precision, device) else torch.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = lightly_step(a, device)
    l_sec, l_flops = measure(step, views, a.steps, device)
    l_mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    ours = run_bench(a, args.overrides)
    lightly = {
        "img_per_s": round(a.batch / l_sec, 1),
        "step_s": round(l_sec, 4),
        "gflop_per_img": round(l_flops / a.batch / 1e9, 3),
        "peak_fraction": round(l_flops / l_sec / 1e9 / peak, 3),
        "peak_mem_mb": round(l_mem, 1) if l_mem else None,
    }
    print(
        json.dumps(
            {
                "device": ours["device"],
                "config": ours["config"],
                "malloc": malloc,
                "sslkd": ours,
                "lightly": lightly,
                "speedup_vs_lightly": round(ours["img_per_s"] / lightly["img_per_s"], 3),
                "interleaved": interleaved(step, a, views, args.overrides, args.pairs, device) if args.pairs else None,
            }
        )
    )


if __name__ == "__main__":
    main()
