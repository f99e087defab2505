"""``sslkd pretrain``: self-supervised pretraining (resumes a run found in the output folder).

With ``--config FILE|NAME`` the config is an experiment; without, ``--method`` and ``--data``
build one from the data and the machine (:mod:`sslkd.autoconfig`), printed in full."""

from __future__ import annotations

import argparse
import os
import signal

import yaml

from sslkd.commands.args import add_train_args, positive
from sslkd.errors import ConfigError
from sslkd.lazy import lazy_import

api = lazy_import("sslkd.api")
autoconfig = lazy_import("sslkd.autoconfig")
config = lazy_import("sslkd.config")
distributed = lazy_import("sslkd.distributed")
methods = lazy_import("sslkd.methods")
models = lazy_import("sslkd.models")


def method_name(value: str) -> str:
    """``--method``: a name in the method registry, read when a value is checked (argparse's
    ``choices`` would be listed by ``--help``, which then imports PyTorch)."""
    if value not in methods.METHODS:
        raise argparse.ArgumentTypeError(f"unknown method '{value}'; available: {', '.join(sorted(methods.METHODS))}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_args(p, config_required=False)
    p.add_argument(
        "--method",
        type=method_name,
        metavar="NAME",
        help="without --config: the method, defaults from the data (sslkd info lists the methods)",
    )
    p.add_argument(
        "--data",
        help="a folder (of images, of shards, of a Hugging Face dataset), hf:user/name, or a dataset name (sslkd info)",
    )
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


def resolve(args: argparse.Namespace, notes: list[str] | None = None):
    """The run's config from ``--config`` or from ``--method``/``--data``, flags and ``--set``
    applied; choices made for the device or the image size are said in ``notes``."""
    if args.config and args.method:
        raise ConfigError("--config and --method: the config names its method; give one of them")
    if getattr(args, "minutes", None):  # resolve() also serves commands without --minutes (distill)
        args.overrides = [*args.overrides, f"train.time_budget_minutes={args.minutes}"]
    if not args.config:
        if not (args.method and args.data):
            raise ConfigError("give --config FILE|NAME, or --method and --data (a folder of images or a dataset name)")
        split = [o.partition("=") for o in args.overrides]
        set_size = {k.strip(): v.strip() for k, _, v in split}.get("data.img_size")
        img_size = args.img_size or (int(set_size) if set_size and set_size.isdigit() else None)  # sizes the recipe
        prefix = "data.options."
        source = {k.strip()[len(prefix) :]: yaml.safe_load(v) for k, _, v in split if k.strip().startswith(prefix)}
        base = autoconfig.auto_config(
            args.method, args.data, args.model, args.out, args.teachers, img_size, args.batch_size, args.epochs, notes,
            source or None,
        )  # fmt: skip
        return api.config(base, args.overrides), True
    flags = {
        "output_dir": args.out,
        "model.backbone": args.model,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "data.img_size": args.img_size,
    }
    if args.data:
        flags.update({f"data.{k}": v for k, v in autoconfig.data_source(args.data).items()})
    values = {k.replace(".", "__"): v for k, v in flags.items() if v is not None}
    if args.teachers:  # the keys the config's method names its teachers with (SEED: one, DMT: a list)
        raw = config.apply_overrides(config.read_yaml(config.config_path(args.config)), list(args.overrides))
        cls = methods.method_class((raw.get("method") or {}).get("name", "dino"))
        values.update({f"method__{k}": v for k, v in cls.teacher_overrides(args.teachers).items()})
    cfg = api.config(args.config, args.overrides, **values)
    if args.img_size and not any(o.strip().startswith("aug.") for o in args.overrides):
        values.update(_crops_within(cfg, args.img_size, notes))
    return api.config(args.config, args.overrides, **values), False


def _crops_within(cfg, size: int, notes: list[str] | None) -> dict:
    """``--img-size`` below a config's crop sizes: the crops shrink in proportion (whole patches
    of a ViT), not upsample ``size``-px images to them; the config's model stays."""
    g, loc = cfg.aug.global_crops_size, cfg.aug.local_crops_size
    if not g or g <= size:
        return {}
    patch = cfg.model.patch_size if models.is_vit(cfg.model.backbone) else 1
    new_g = max(patch, size // patch * patch)
    new_loc = max(patch, round(loc * new_g / g / patch) * patch) if loc else None
    if notes is not None:
        shown = f"{g}/{loc}" if loc else str(g)
        notes.append(
            f"--img-size {size}: crops {shown} px -> {new_g}{f'/{new_loc}' if loc else ''} px "
            f"(the config's model, {cfg.model.backbone}, stays)"
        )
    return {"aug__global_crops_size": new_g, **({"aug__local_crops_size": new_loc} if loc else {})}


def run(args: argparse.Namespace) -> int:
    notes: list[str] = []
    cfg, built = resolve(args, notes)
    main_process = os.environ.get("RANK", "0") == "0"  # torchrun: print once
    if main_process:
        notes += autoconfig.long_run_notes(cfg, ["sslkd", *getattr(args, "argv", [])])
        for note in notes:  # comments: the config printed below stays valid YAML
            print(f"# {note}", flush=True)
    if built and main_process:
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
    if res.summary["status"] != "interrupted":
        return 0
    return 128 + (res.summary.get("signal") or signal.SIGINT)  # a shell's 130 / 143; a rank not signalled: 130
