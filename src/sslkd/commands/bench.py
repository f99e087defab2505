"""``sslkd bench``: images/s of one training step and of the data pipeline (one JSON line)."""

from __future__ import annotations

import argparse
import json

from sslkd.commands.args import add_set
from sslkd.lazy import lazy_import

bench = lazy_import("sslkd.bench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="ibot", help="method to time")
    p.add_argument("--backbone", default="vit_tiny", help="backbone to time")
    for flags, dest, default, what in (  # the spelling of the other commands, the short one kept
        (("--img-size", "--img"), "img", 32, "global crop size"),
        (("--patch-size", "--patch"), "patch", 4, "ViT patch size"),
        (("--batch-size", "--batch"), "batch", 64, "images per step"),
        (("--local-crops",), "local_crops", 6, "local crops per image"),
        (("--local-img-size", "--local-img"), "local_img", 16, "local crop size"),
        (("--out-dim",), "out_dim", 8192, "head prototypes"),
        (("--steps",), "steps", 10, "timed steps"),
        (("--data-batches",), "data_batches", 10, "timed loader batches"),
    ):
        p.add_argument(*flags, dest=dest, type=int, default=default, help=what)
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (default: the config's)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"], help="autocast precision")
    p.add_argument("--compile", action="store_true", help="torch.compile backbones and heads")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_set(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    fields = {k: getattr(args, k) for k in bench.BenchArgs.__dataclass_fields__}
    print(json.dumps(bench.run_bench(bench.BenchArgs(**fields), args.overrides)))
    return 0
