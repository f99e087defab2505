"""What several commands share: argument types, the ``RUN@<n>`` model spec, the evaluation
source flags, and the wording of a model index a run does not have."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager

import yaml

from sslkd.errors import ConfigError, NoSuchModelError


def positive(kind):
    """An argparse type: ``kind`` (int or float) > 0, else a usage error naming the value."""

    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def positive_list(kind):
    """An argparse type: comma-separated positive values of ``kind`` (one value is a list of one)."""
    one = positive(kind)

    def parse(text: str):
        return [one(part) for part in text.split(",") if part.strip()] or [one(text)]

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def share(text: str) -> float:
    """An argparse type: a share in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=10 (repeatable)",
    )


def add_train_args(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument(
        "--config",
        required=config_required,
        help="YAML file, or a shipped config by name (e.g. ibot/cifar10_vit_tiny_kd)",
    )
    add_set(p)
    p.add_argument(
        "--resume",
        default="auto",
        help="auto (default: newest valid checkpoint in output_dir), a checkpoint path, or none",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", metavar="RUN", help="run folder or checkpoint (as attention, export, report)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="the same as RUN")
    src.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised backbone")
    p.add_argument("--weights", default="teacher", choices=["teacher", "student"], help="which weights of the run")
    p.add_argument("--model", type=int, default=1, choices=[1, 2], help="MOKD: which of the two models")
    p.add_argument("--dataset", required=True, help="dataset name (see `sslkd info`)")
    p.add_argument("--root", default=None, help="dataset folder")
    p.add_argument("--img-size", type=int, default=None, help="resize images (default: the checkpoint's)")
    p.add_argument("--backbone", default="vit_tiny", help="with --random-init")
    p.add_argument("--patch-size", type=int, default=4, help="with --random-init")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=positive(int), default=256, help="images per feature batch")
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="loader processes decoding a folder of images (default: min(8, CPUs))",
    )
    p.add_argument("--seed", type=int, default=0, help="random init, probe and fine-tuning seed")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="data.KEY=VALUE",
        help=f"a data key, e.g. --set data.on_corrupt=skip (repeatable; {', '.join(EVAL_DATA_KEYS)}, data.options.KEY)",
    )


EVAL_DATA_KEYS = ("data.on_corrupt", "data.max_pixels", "data.labels", "data.in_memory", "data.download")


def eval_data_options(args: argparse.Namespace) -> dict:
    """The data keys of an evaluation command's ``--set`` (those ``get_dataset`` takes; a source's
    own ``data.options.KEY`` gathered into ``options``), checked."""
    options: dict = {}
    for text in args.overrides:
        key, _, value = text.partition("=")
        key, value = key.strip(), yaml.safe_load(value) if value.strip() else None
        if key.startswith("data.options.") and _:
            options.setdefault("options", {})[key[len("data.options.") :]] = value
            continue
        if key not in EVAL_DATA_KEYS or not _:
            raise ConfigError(
                f"--set {text}: evaluation takes {', '.join(k + '=...' for k in EVAL_DATA_KEYS)}, data.options.KEY=..."
            )
        options[key[5:]] = value
    sources = [x for x in (args.source, args.checkpoint) if x] + (["--random-init"] if args.random_init else [])
    if len(sources) != 1:
        raise ConfigError("name one source: RUN (or --checkpoint RUN), or --random-init")
    args.checkpoint = args.checkpoint or args.source
    return options


def split_model(spec: str) -> tuple[str, int]:
    """``RUN`` or ``RUN@<n>`` (MOKD's model n) -> (path, n)."""
    path, _, model = spec.partition("@")
    if model and not model.isdigit():
        raise ValueError(f"{spec}: expected RUN or RUN@<model number> (RUN@2: MOKD's second model)")
    return path, int(model or 1)


@contextmanager
def model_flag(flag: str) -> Iterator[None]:
    """Name the flag the user typed when a run has no such model (``--model 2``, ``RUN@2``)."""
    try:
        yield
    except NoSuchModelError as e:
        raise NoSuchModelError(f"{flag}: {e}") from None
