"""Peak memory and time of RKD losses (forward + backward) by batch size, at iBOT's head width.

Each batch size runs in a fresh process; peak memory is that process's max RSS minus its RSS
after the inputs were created, so it counts what the loss itself needs.

    python benchmarks/rkd_memory.py                     # RKD-A and RKD-D, D=65536, B=16..512
    python benchmarks/rkd_memory.py --dim 8192 --batches 16 64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one(loss_name: str, batch: int, dim: int, device: str = "cpu") -> dict:
    import torch

    from sslkd.losses.rkd import RKDAngleLoss, RKDDistanceLoss

    torch.manual_seed(0)
    s = torch.randn(batch, dim, device=device, requires_grad=True)
    t = torch.randn(batch, dim, device=device)
    loss_fn = RKDAngleLoss() if loss_name == "angle" else RKDDistanceLoss()
    cuda = torch.device(device).type == "cuda"
    if cuda:  # the loss's own allocations: peak above the inputs
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mb()
    tic = time.perf_counter()
    loss_fn(s, t).backward()
    if cuda:
        torch.cuda.synchronize()
    first = time.perf_counter() - tic  # includes one-time costs (kernel selection, allocator growth)
    tic = time.perf_counter()
    loss_fn(s, t).backward()
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - tic
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "loss": f"rkd-{loss_name[0]}",
        "batch": batch,
        "dim": dim,
        "seconds": round(sec, 4),
        "first_call_s": round(first, 4),
        "inputs_mb": round(2 * batch * dim * 4 / 2**20, 1),
        "peak_extra_mb": round(peak - base, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=65536)
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256, 512])
    p.add_argument("--losses", nargs="+", default=["angle", "distance"])
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    for name in args.losses:
        for b in args.batches:
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, str(b), str(args.dim)], capture_output=True, text=True
            )
            if out.returncode:
                sys.exit(f"rkd-{name} at batch {b} failed:\n{out.stderr}")
            print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
