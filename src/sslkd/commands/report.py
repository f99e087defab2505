"""``sslkd report RUN...``: one self-contained HTML page for one or more runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from sslkd.lazy import lazy_import

loggers = lazy_import("sslkd.train.loggers")
report = lazy_import("sslkd.report")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", default="report.html", help="HTML file")
    p.add_argument("--dataset", default=None, help="default: each run's dataset")
    p.add_argument("--root", default=None, help="dataset folder")
    p.add_argument("--eval-train-samples", type=int, default=5000, help="evenly spaced training images (kNN, linear)")
    p.add_argument("--eval-test-samples", type=int, default=1000, help="evenly spaced test images")
    p.add_argument("--linear-epochs", type=int, default=50, help="linear probe epochs")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    page = report.build_report(
        args.runs,
        args.out,
        args.dataset,
        args.root,
        args.eval_train_samples,
        args.eval_test_samples,
        args.linear_epochs,
        args.device,
    )
    print(page)
    for run_dir in map(Path, args.runs):  # the W&B / MLflow runs of the run folders take the page too
        took = loggers.attach(run_dir, [Path(page)])
        if took:
            print(f"{run_dir}: report added to its {' and '.join(took)} run")
    return 0
