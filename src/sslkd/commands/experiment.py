"""``sslkd experiment table1|compare``: pretrain several configs under one budget, then tabulate
each evaluation protocol's accuracy (linear / kNN by default, fine-tuning) with curves and attention maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from sslkd.commands.args import add_set
from sslkd.lazy import lazy_import

compare = lazy_import("sslkd.experiments.compare")
seeds = lazy_import("sslkd.experiments.seeds")
table1 = lazy_import("sslkd.experiments.table1")


def add_arguments(p: argparse.ArgumentParser) -> None:
    kinds = p.add_subparsers(dest="experiment", required=True)
    t1 = kinds.add_parser("table1", help="masked relational KD, Table 1 (+ curves, attention maps)")
    t1.add_argument("--configs", nargs="+", default=None, help="default: the ViT-Tiny CIFAR-10 variant")
    cmp = kinds.add_parser("compare", help="pretrain several configs with one budget, tabulate linear/kNN")
    cmp.add_argument("--configs", nargs="+", required=True, help="YAML files, one run each")
    cmp.add_argument("--random-init", action="store_true", help="add a row for the first config's random init")
    cmp.add_argument("--name", default="comparison", help="file stem of the table")
    for e in (t1, cmp):
        e.add_argument("--epochs", type=int, default=None, help="budget: epochs per run (same for all)")
        e.add_argument("--max-steps", type=int, default=None, help="budget: stop every run after this many steps")
        e.add_argument(
            "--minutes",
            type=float,
            default=None,
            help="budget: training minutes per run, planned: each run measures its step rate and "
            "ends every schedule at the budget (--epochs stays an upper bound)",
        )
        e.add_argument(
            "--budget", default="", help="the same as one spec: e.g. 1epochs, 500steps, 20min, 1epochs,20min"
        )
        e.add_argument(
            "--seeds",
            default=None,
            help="run every row N times (seeds 0..N-1) or with these seeds (0,1,5): mean and spread per row, "
            "runs in <out>/<row>/seed<s>",
        )
        add_set(e)
        e.add_argument("--eval-dataset", default=None, help="default: the pretraining dataset")
        e.add_argument("--eval-root", default=None, help="folder of --eval-dataset")
        e.add_argument("--eval-train-samples", type=int, default=None, help="evenly spaced subset (all classes)")
        e.add_argument("--eval-test-samples", type=int, default=None, help="evenly spaced test subset")
        e.add_argument(
            "--protocols",
            default="linear,knn",
            help="evaluation protocols on frozen features scoring every backbone, comma-separated "
            "(linear, knn, logreg: sslkd eval --help)",
        )
        e.add_argument("--linear-epochs", type=int, default=100, help="linear probe epochs")
        e.add_argument(
            "--finetune-epochs",
            type=int,
            default=0,
            help="also fine-tune a copy of every backbone this many epochs on the eval subsets (0: off)",
        )
        e.add_argument("--out", default=f"runs/{e.prog.split()[-1]}", help="folder of the runs and tables")
        e.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    budget = (
        ([f"train.epochs={args.epochs}"] if args.epochs else [])
        + ([f"train.max_steps={args.max_steps}"] if args.max_steps else [])
        + ([f"train.time_budget_minutes={args.minutes}"] if args.minutes else [])
        + compare.budget_overrides(args.budget)
    )
    is_table1 = args.experiment == "table1"
    name = "table1" if is_table1 else args.name
    compare.run_comparison(
        args.configs or table1.DEFAULT_CONFIGS,
        args.out,
        budget + args.overrides,
        args.eval_dataset,
        args.eval_root,
        args.linear_epochs,
        random_init=is_table1 or args.random_init,
        eval_train_samples=args.eval_train_samples,
        eval_test_samples=args.eval_test_samples,
        name=name,
        finetune_epochs=args.finetune_epochs,
        progress=not args.no_progress,
        seeds=seeds.parse_seeds(args.seeds),
        protocols=[p.strip() for p in args.protocols.split(",") if p.strip()],
    )
    print((Path(args.out) / f"{name}.md").read_text())
    return 0
