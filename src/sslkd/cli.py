"""``sslkd``: self-supervised pretraining and distillation (pretrain, distill), evaluation (eval, attention,
analyze, plot, report), paper experiments (experiment), export, bench, demo, info."""

from __future__ import annotations

import argparse
import os
import json
import platform
from pathlib import Path
import sys

from sslkd import __version__


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint file or run folder")
    src.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised backbone")
    p.add_argument("--weights", default="teacher", choices=["teacher", "student"])
    p.add_argument("--model", type=int, default=1, choices=[1, 2], help="MOKD: which of the two models")
    p.add_argument("--dataset", required=True, help="dataset name (see `sslkd info`)")
    p.add_argument("--root", default=None, help="dataset folder")
    p.add_argument("--img-size", type=int, default=None, help="resize images (default: the checkpoint's)")
    p.add_argument("--backbone", default="vit_tiny", help="with --random-init")
    p.add_argument("--patch-size", type=int, default=4, help="with --random-init")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_positive(int), default=256)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="loader processes decoding a folder of images (default: min(8, CPUs))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=10 (repeatable)")
    p.add_argument("--resume", default="auto", help="auto (default: newest valid checkpoint in "
                   "output_dir), a checkpoint path, or none")
    p.add_argument("--no-progress", action="store_true")


def _positive_list(kind):
    """An argparse type: comma-separated positive values of ``kind`` (one value is a list of one)."""
    one = _positive(kind)

    def parse(text: str):
        return [one(part) for part in text.split(",") if part.strip()] or [one(text)]
    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def _positive(kind):
    """An argparse type: ``kind`` (int or float) > 0, else a usage error naming the value."""
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _share(text: str) -> float:
    """An argparse type: a share in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslkd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sslkd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="self-supervised pretraining from a YAML config")
    _add_train_args(p)

    dis = sub.add_parser("distill", help="distil a frozen teacher into a student")
    diss = dis.add_subparsers(dest="distill_method", required=True)
    for name, what in (("seed", "SEED: match the teacher's similarity distribution over a queue"),):
        d = diss.add_parser(name, help=what)
        d.add_argument("--teacher", required=True, help="sslkd run folder or checkpoint, a .pth/.safetensors "
                       "file (set method.teacher_arch), or timm:<model name>")
        _add_train_args(d)

    ev = sub.add_parser("eval", help="evaluate a frozen backbone")
    evs = ev.add_subparsers(dest="protocol", required=True)
    knn = evs.add_parser("knn", help="weighted kNN (k=20, T=0.07, cosine)")
    _add_eval_args(knn)
    knn.add_argument("--k", type=_positive_list(int), default=[20],
                     help="neighbours; a list (10,20,100,200: MOKD's protocol) prints each and the best")
    knn.add_argument("--temperature", type=_positive(float), default=0.07)
    lin = evs.add_parser("linear", help="linear probe on frozen features")
    _add_eval_args(lin)
    lin.add_argument("--epochs", type=_positive(int), default=100)
    lin.add_argument("--lr", type=float, default=0.1)
    ft = evs.add_parser("finetune", help="full fine-tuning (AdamW, layer-wise lr decay, warm-up + cosine)")
    _add_eval_args(ft)
    ft.add_argument("--epochs", type=_positive(int), default=30)
    ft.add_argument("--lr", type=float, default=1e-3, help="base rate for batch 256 (scaled with the batch)")
    ft.add_argument("--layer-decay", type=float, default=0.75)
    ft.add_argument("--weight-decay", type=float, default=0.05)
    ft.add_argument("--warmup-epochs", type=float, default=3.0)
    ft.add_argument("--label-fraction", type=float, default=1.0, help="class-balanced share of the labels (0.01, 0.1)")
    ft.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ft.add_argument("--out", default=None, help="JSON result (default: RUN/finetune[_<fraction>].json; "
                    "an earlier one there is kept, renamed with its date)")

    demo = sub.add_parser("demo", help="pretrain DINO on the embedded digits data and compare kNN")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    demo.add_argument("--no-progress", action="store_true")

    plot = sub.add_parser("plot", help="figures from run folders")
    plots = plot.add_subparsers(dest="figure", required=True)
    curves = plots.add_parser("curves", help="loss terms and teacher/student agreement per step (PNG)")
    curves.add_argument("runs", nargs="+", help="run folders (or metrics.jsonl files)")
    curves.add_argument("--out", default="curves.png")
    curves.add_argument("--labels", nargs="*")
    curves.add_argument("--smooth", type=int, default=1, help="moving average over this many steps")

    att = sub.add_parser("attention", help="last-block CLS attention of every head (PNG grid)")
    att.add_argument("checkpoint", help="checkpoint file or run folder (RUN@2: MOKD's second model)")
    att.add_argument("--dataset", default=None, help="take images from this dataset's test split")
    att.add_argument("--root", default=None)
    att.add_argument("--indices", type=int, nargs="*", default=[0, 1, 2, 3])
    att.add_argument("--images", nargs="*", help="image files instead of --dataset")
    att.add_argument("--threshold", type=_share, default=None, help="keep this share of the mass (e.g. 0.6)")
    att.add_argument("--weights", default="teacher", choices=["teacher", "student"])
    att.add_argument("--out", default="attention.png")

    an = sub.add_parser("analyze", help="MOKD's analyses on any checkpoints (RUN or RUN@2 for MOKD's model 2)")
    ans = an.add_subparsers(dest="analysis", required=True)
    con = ans.add_parser("consistency", help="share of test images where two models' kNN predictions agree")
    con.add_argument("checkpoints", nargs=2)
    tsn = ans.add_parser("tsne", help="t-SNE of test features for chosen classes (PNG)")
    tsn.add_argument("checkpoints", nargs=1)
    tsn.add_argument("--classes", type=int, nargs="*", default=None)
    dis = ans.add_parser("attention-distance", help="mean attention distance per layer (PNG)")
    dis.add_argument("checkpoints", nargs="+")
    dis.add_argument("--images", type=_positive(int), default=64, help="test images averaged over")
    for a in (con, tsn, dis):
        a.add_argument("--dataset", default=None, help="default: the checkpoint's dataset")
        a.add_argument("--root", default=None)
        a.add_argument("--weights", default="teacher", choices=["teacher", "student"])
        a.add_argument("--device", default="auto")
        if a is not con:
            a.add_argument("--out", default=f"{a.prog.split()[-1]}.png")

    exp = sub.add_parser("experiment", help="reproduce a paper's experiment")
    exps = exp.add_subparsers(dest="experiment", required=True)
    t1 = exps.add_parser("table1", help="masked relational KD, Table 1 (+ curves, attention maps)")
    t1.add_argument("--configs", nargs="+", default=None, help="default: the ViT-Tiny CIFAR-10 variant")
    cmp = exps.add_parser("compare", help="pretrain several configs with one budget, tabulate linear/kNN")
    cmp.add_argument("--configs", nargs="+", required=True)
    cmp.add_argument("--random-init", action="store_true", help="add a row for the first config's random init")
    cmp.add_argument("--name", default="comparison", help="file stem of the table")
    for e in (t1, cmp):
        e.add_argument("--epochs", type=int, default=None, help="budget: epochs per run (same for all)")
        e.add_argument("--max-steps", type=int, default=None, help="budget: stop every run after this many steps")
        e.add_argument("--minutes", type=float, default=None, help="budget: wall-clock training minutes per run")
        e.add_argument("--budget", default="", help="the same as one spec: e.g. 1epochs, 500steps, 20min, 1epochs,20min")
        e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        e.add_argument("--eval-dataset", default=None, help="default: the pretraining dataset")
        e.add_argument("--eval-root", default=None)
        e.add_argument("--eval-train-samples", type=int, default=None, help="evenly spaced subset (all classes)")
        e.add_argument("--eval-test-samples", type=int, default=None)
        e.add_argument("--linear-epochs", type=int, default=100)
        e.add_argument("--finetune-epochs", type=int, default=0,
                       help="also fine-tune a copy of every backbone this many epochs on the eval subsets (0: off)")
        e.add_argument("--out", default=f"runs/{e.prog.split()[-1]}")
        e.add_argument("--no-progress", action="store_true")

    rep = sub.add_parser("report", help="one self-contained HTML page for one or more runs")
    rep.add_argument("runs", nargs="+")
    rep.add_argument("--out", default="report.html")
    rep.add_argument("--dataset", default=None, help="default: each run's dataset")
    rep.add_argument("--root", default=None)
    rep.add_argument("--eval-train-samples", type=int, default=5000)
    rep.add_argument("--eval-test-samples", type=int, default=1000)
    rep.add_argument("--linear-epochs", type=int, default=50)
    rep.add_argument("--device", default="auto")

    ex = sub.add_parser("export", help="the backbone alone as safetensors + timm config.json, or ONNX")
    ex.add_argument("source", help="run folder or checkpoint (RUN@2: MOKD's second model)")
    ex.add_argument("--out", required=True)
    ex.add_argument("--weights", default="teacher", choices=["teacher", "student"])
    ex.add_argument("--format", dest="formats", action="append", choices=["safetensors", "timm", "onnx"],
                    help="repeatable; default safetensors (which timm loads: the same files)")

    b = sub.add_parser("bench", help="images/s of one training step and of the data pipeline (one JSON line)")
    b.add_argument("--method", default="ibot")
    b.add_argument("--backbone", default="vit_tiny")
    for name, default in (("img", 32), ("patch", 4), ("batch", 64), ("local-crops", 6), ("local-img", 16),
                          ("out-dim", 8192), ("steps", 10), ("data-batches", 10)):
        b.add_argument(f"--{name}", type=int, default=default)
    b.add_argument("--workers", type=int, default=None, help="data-loader workers (default: the config's)")
    b.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    b.add_argument("--compile", action="store_true", help="torch.compile backbones and heads")
    b.add_argument("--device", default="auto")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    sub.add_parser("info", help="versions, device, threads, datasets, methods")
    return parser


def main(argv: list[str] | None = None) -> int:
    from sslkd.config import ConfigError
    from sslkd.data import DatasetError
    from sslkd.train import TrainingError
    from sslkd.train.checkpoint import CheckpointError

    from sslkd.cli_eval import run_analyze, run_attention, run_eval, split_model

    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            return _pretrain(args)
        if args.command == "distill":
            args.overrides = [f"method.name={args.distill_method}", f"method.teacher={args.teacher}"] + args.overrides
            return _pretrain(args)
        if args.command == "eval":
            return run_eval(args)
        if args.command == "demo":
            from sslkd.demo import run_demo
            run_demo(args.output_dir, args.overrides, progress=not args.no_progress)
            return 0
        if args.command == "plot":
            from sslkd.eval.curves import plot_curves
            print(plot_curves(args.runs, args.out, args.labels, args.smooth))
            return 0
        if args.command == "attention":
            return run_attention(args)
        if args.command == "experiment":
            return _experiment(args)
        if args.command == "analyze":
            return run_analyze(args)
        if args.command == "report":
            from sslkd.report import build_report
            print(build_report(args.runs, args.out, args.dataset, args.root, args.eval_train_samples,
                               args.eval_test_samples, args.linear_epochs, args.device))
            return 0
        if args.command == "export":
            from sslkd.export import export
            src, model = split_model(args.source)
            files = export(src, args.out, args.weights, model, tuple(args.formats or ["safetensors"]))
            print(json.dumps({k: str(v) for k, v in files.items()}))
            return 0
        if args.command == "bench":
            from sslkd.bench import BenchArgs, run_bench
            fields = {k: getattr(args, k) for k in BenchArgs.__dataclass_fields__}
            print(json.dumps(run_bench(BenchArgs(**fields), args.overrides)))
            return 0
        return _info()
    except ConfigError as e:
        print(f"sslkd: config error: {e}", file=sys.stderr)
        return 2
    except (DatasetError, CheckpointError, TrainingError, ValueError, OSError) as e:  # OSError: names the file
        print(f"sslkd: error: {e}", file=sys.stderr)
        return 1


def _experiment(args) -> int:
    from sslkd.experiments.compare import budget_overrides, run_comparison
    from sslkd.experiments.table1 import DEFAULT_CONFIGS

    budget = ([f"train.epochs={args.epochs}"] if args.epochs else []) + \
        ([f"train.max_steps={args.max_steps}"] if args.max_steps else []) + \
        ([f"train.time_budget_minutes={args.minutes}"] if args.minutes else []) + budget_overrides(args.budget)
    table1 = args.experiment == "table1"
    name = "table1" if table1 else args.name
    run_comparison(args.configs or DEFAULT_CONFIGS, args.out, budget + args.overrides, args.eval_dataset,
                   args.eval_root, args.linear_epochs, random_init=table1 or args.random_init,
                   eval_train_samples=args.eval_train_samples, eval_test_samples=args.eval_test_samples,
                   name=name, finetune_epochs=args.finetune_epochs, progress=not args.no_progress)
    print((Path(args.out) / f"{name}.md").read_text())
    return 0


def _pretrain(args) -> int:
    from sslkd.config import load_config
    from sslkd.train import Trainer

    from sslkd.distributed import is_distributed

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, progress=not args.no_progress)  # joins torchrun's process group, if any
    summary = trainer.fit(resume=None if args.resume == "none" else args.resume)
    if is_distributed():
        import torch.distributed as dist
        dist.destroy_process_group()
    if trainer.is_main:
        print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}))
    return 130 if summary["status"] == "interrupted" else 0


def _info() -> int:
    import timm
    import torch
    import torchvision

    from sslkd.data import DATASETS
    from sslkd.device import native_bf16
    from sslkd.methods import METHODS
    from sslkd.models import BACKBONES

    cuda = torch.cuda.is_available()
    print(f"sslkd {__version__}  python {platform.python_version()}  {platform.machine()}")
    print(f"torch {torch.__version__}  torchvision {torchvision.__version__}  timm {timm.__version__}")
    print(f"device: {'cuda: ' + torch.cuda.get_device_name(0) if cuda else 'cpu'}  "
          f"threads: {torch.get_num_threads()}  cpu: {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {'yes' if native_bf16(torch.device('cpu')) else 'no (precision auto uses fp32)'}")
    print(f"methods: {', '.join(METHODS)}")
    print(f"backbones: {', '.join(BACKBONES)}")
    print(f"datasets: {', '.join(DATASETS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
