"""``sslkd bench``: images/s of one training step and of the data pipeline (one JSON line)."""

from __future__ import annotations

import argparse
import json

from sslkd.bench import BenchArgs, run_bench
from sslkd.commands.args import add_set


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="ibot", help="method to time")
    p.add_argument("--backbone", default="vit_tiny", help="backbone to time")
    for name, default, what in (
        ("img", 32, "global crop size"),
        ("patch", 4, "ViT patch size"),
        ("batch", 64, "images per step"),
        ("local-crops", 6, "local crops per image"),
        ("local-img", 16, "local crop size"),
        ("out-dim", 8192, "head prototypes"),
        ("steps", 10, "timed steps"),
        ("data-batches", 10, "timed loader batches"),
    ):
        p.add_argument(f"--{name}", type=int, default=default, help=what)
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (default: the config's)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"], help="autocast precision")
    p.add_argument("--compile", action="store_true", help="torch.compile backbones and heads")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_set(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    fields = {k: getattr(args, k) for k in BenchArgs.__dataclass_fields__}
    print(json.dumps(run_bench(BenchArgs(**fields), args.overrides)))
    return 0
