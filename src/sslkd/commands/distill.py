"""``sslkd distill seed --teacher T --config FILE``: pretraining with a frozen teacher."""

from __future__ import annotations

import argparse

from sslkd.commands import pretrain
from sslkd.commands.args import add_train_args

PRETRAIN_ONLY = ("method", "data", "model", "out", "epochs", "batch_size", "img_size")


def add_arguments(p: argparse.ArgumentParser) -> None:
    methods = p.add_subparsers(dest="distill_method", required=True)
    d = methods.add_parser("seed", help="SEED: match the teacher's similarity distribution over a queue")
    d.add_argument(
        "--teacher",
        required=True,
        help="sslkd run folder or checkpoint, a .pth/.safetensors file (set method.teacher_arch), or timm:<model name>",
    )
    add_train_args(d)
    d.set_defaults(**dict.fromkeys(PRETRAIN_ONLY), teachers=[])  # pretrain's flags that distill has not
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    args.overrides = [f"method.name={args.distill_method}", f"method.teacher={args.teacher}"] + args.overrides
    return pretrain.run(args)
