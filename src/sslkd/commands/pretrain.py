"""``sslkd pretrain``: self-supervised pretraining (resumes a run found in the output folder).

With ``--config FILE|NAME`` the config is an experiment; without, ``--method`` and ``--data``
build one from the data and the machine (:mod:`sslkd.autoconfig`), printed in full."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from sslkd.commands.args import add_train_args, positive
from sslkd.errors import ConfigError
from sslkd.lazy import lazy_import

api = lazy_import("sslkd.api")
autoconfig = lazy_import("sslkd.autoconfig")
config = lazy_import("sslkd.config")
distributed = lazy_import("sslkd.distributed")
METHOD_NAMES = ("dino", "ibot", "mocov3", "mae", "mokd", "seed", "dmt")  # sslkd.methods.METHODS (a test checks)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_args(p, config_required=False)
    p.add_argument("--method", choices=METHOD_NAMES, help="without --config: the method (defaults from the data)")
    p.add_argument("--data", help="without --config: a folder of images, or a dataset name (sslkd info)")
    p.add_argument("--model", help="backbone (default: vit_small for photos, vit_tiny for small images)")
    p.add_argument(
        "--teacher",
        dest="teachers",
        action="append",
        default=[],
        help="seed/dmt: a teacher (run folder, checkpoint, weight file, timm:<model>); repeatable",
    )
    p.add_argument("--out", help="run folder (output_dir)")
    p.add_argument("--epochs", type=positive(int), help="train.epochs")
    p.add_argument(
        "--minutes",
        type=positive(float),
        help="train.time_budget_minutes: measure the step rate, then plan every schedule to end at this "
        "much training time (train.epochs stays an upper bound)",
    )
    p.add_argument("--batch-size", type=positive(int), help="train.batch_size (images per optimiser step)")
    p.add_argument("--img-size", type=positive(int), help="data.img_size (resize the images)")
    p.set_defaults(run=run)


def resolve(args: argparse.Namespace):
    """The run's config from ``--config`` or from ``--method``/``--data``, flags and ``--set`` applied."""
    if args.config and args.method:
        raise ConfigError("--config and --method: the config names its method; give one of them")
    if getattr(args, "minutes", None):  # resolve() also serves commands without --minutes (distill)
        args.overrides = [*args.overrides, f"train.time_budget_minutes={args.minutes}"]
    if not args.config:
        if not (args.method and args.data):
            raise ConfigError("give --config FILE|NAME, or --method and --data (a folder of images or a dataset name)")
        base = autoconfig.auto_config(
            args.method, args.data, args.model, args.out, args.teachers, args.img_size, args.batch_size, args.epochs
        )
        return api.config(base, args.overrides), True
    flags = {
        "output_dir": args.out,
        "model.backbone": args.model,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "data.img_size": args.img_size,
    }
    if args.data:
        folder = Path(args.data).expanduser().is_dir()
        flags.update({"data.name": "imagefolder", "data.root": args.data} if folder else {"data.name": args.data})
    values = {k.replace(".", "__"): v for k, v in flags.items() if v is not None}
    if args.teachers:  # SEED's one teacher or DMT's list, as the config's method takes them
        raw = config.apply_overrides(config.read_yaml(config.config_path(args.config)), list(args.overrides))
        method = (raw.get("method") or {}).get("name", "dino")
        if method not in ("seed", "dmt"):
            raise ConfigError(f"--teacher: the config's method ({method}) takes no teacher")
        if method == "seed" and len(args.teachers) > 1:
            raise ConfigError("--teacher: SEED distils one teacher; DMT takes several")
        values["method__" + ("teacher" if method == "seed" else "teachers")] = (
            args.teachers[0] if method == "seed" else list(args.teachers)
        )
    return api.config(args.config, args.overrides, **values), False


def run(args: argparse.Namespace) -> int:
    cfg, built = resolve(args)
    if built and os.environ.get("RANK", "0") == "0":  # torchrun: print once
        print(
            f"# sslkd pretrain --method {args.method} --data {args.data}: the config used "
            f"(saved as {cfg.output_dir}/config.yaml; --config takes it)"
        )
        print(yaml.safe_dump(config.to_dict(cfg), sort_keys=False, explicit_end=True), end="", flush=True)
    res = api.pretrain(cfg, progress=not args.no_progress, resume=None if args.resume == "none" else args.resume)
    main_process = distributed.rank() == 0
    distributed.shutdown()
    if main_process:
        print(api.summary_line(res.summary))
    return 130 if res.summary["status"] == "interrupted" else 0
