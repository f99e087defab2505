"""``sslkd demo``: DINO on the embedded digits, then kNN against raw pixels and a random init."""

from __future__ import annotations

import argparse

from sslkd.commands.args import add_set
from sslkd.lazy import lazy_import

demo = lazy_import("sslkd.demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", "--output-dir", dest="output_dir", default="runs/demo", help="run folder (resumed if present)"
    )
    add_set(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    demo.run_demo(args.output_dir, args.overrides, progress=not args.no_progress)
    return 0
