"""``sslkd pretrain --config FILE``: self-supervised pretraining (resumes a run in output_dir)."""

from __future__ import annotations

import argparse

import torch.distributed as dist

from sslkd import api
from sslkd.commands.args import add_train_args
from sslkd.distributed import is_distributed


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    res = api.pretrain(
        args.config,
        overrides=args.overrides,
        progress=not args.no_progress,
        resume=None if args.resume == "none" else args.resume,
    )
    main_process = not is_distributed() or dist.get_rank() == 0
    if is_distributed():
        dist.destroy_process_group()
    if main_process:
        print(api.summary_line(res.summary))
    return 130 if res.summary["status"] == "interrupted" else 0
