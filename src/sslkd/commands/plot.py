"""``sslkd plot curves RUN...``: loss terms and teacher/student agreement per step (PNG)."""

from __future__ import annotations

import argparse

from sslkd.lazy import lazy_import

curves = lazy_import("sslkd.eval.curves")


def add_arguments(p: argparse.ArgumentParser) -> None:
    figures = p.add_subparsers(dest="figure", required=True)
    fig = figures.add_parser("curves", help="loss terms and teacher/student agreement per step (PNG)")
    fig.add_argument("runs", nargs="+", help="run folders (or metrics.jsonl files)")
    fig.add_argument("--out", default="curves.png", help="PNG file")
    fig.add_argument("--labels", nargs="*", help="legend labels (default: the run folders' names)")
    fig.add_argument("--smooth", type=int, default=1, help="moving average over this many steps")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(curves.plot_curves(args.runs, args.out, args.labels, args.smooth))
    return 0
