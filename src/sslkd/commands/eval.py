"""``sslkd eval <protocol>``: accuracy of a frozen (or fine-tuned) backbone on a dataset's held-out
split, from a run or a random initialisation. One sub-command per registered protocol
(:data:`sslkd.eval.PROTOCOLS`), its flags made from the protocol's typed options."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import typing
from pathlib import Path

import yaml

from sslkd.commands.args import add_eval_args, eval_data_options, model_flag
from sslkd.errors import ConfigError
from sslkd.eval.protocols import PROTOCOLS
from sslkd.lazy import lazy_import
from sslkd.schema import coerce

api = lazy_import("sslkd.api")


def add_arguments(p: argparse.ArgumentParser) -> None:
    protocols = p.add_subparsers(dest="protocol", required=True)
    for name, protocol in PROTOCOLS.items():
        sub = protocols.add_parser(name, help=protocol.help, description=protocol.help)
        add_eval_args(sub)
        hints = typing.get_type_hints(protocol.Options, include_extras=True)
        for f in dataclasses.fields(protocol.Options):
            sub.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f"option_{f.name}",
                type=_parser(f.name, hints[f.name]),
                default=None,
                metavar=f.name.upper(),
                help=f"{f.metadata.get('help', '')} (default: {_text(f.default)})",
            )
        sub.add_argument(
            "--out",
            default=None,
            help="JSON result"
            + (f" (default for a run folder: RUN/{protocol.result_file(protocol.Options())}, an earlier one there "
               "kept, renamed with its date)" if protocol.result_file(protocol.Options()) else ""),
        )  # fmt: skip
    p.set_defaults(run=run)


def _parser(name: str, tp):
    """An argparse type: YAML scalars, comma-separated where the option takes a list, checked
    against the option's type (a usage error naming the value)."""
    sequence = "tuple[" in repr(tp) or "list[" in repr(tp)

    def parse(text: str):
        raw = [yaml.safe_load(part) for part in text.split(",") if part.strip()] if sequence else yaml.safe_load(text)
        try:
            return coerce(raw, tp, name)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name
    return parse


def _text(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    options = eval_data_options(args)
    protocol = PROTOCOLS[args.protocol]
    chosen = {f.name: getattr(args, f"option_{f.name}") for f in dataclasses.fields(protocol.Options)}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    if args.checkpoint:  # the datasets are read with the run's data.options, --set data.options.KEY over them
        source, data = args.checkpoint, args.dataset
    else:
        data = api.eval_datasets(args.dataset, args.root, args.img_size, **options)
        source = api.random_backbone(args.backbone, data[0].img_size, args.patch_size, data[0].num_channels, args.seed)
    with model_flag(f"--model {args.model}"):
        res = api.evaluate(
            source, data, args.protocol, root=args.root, which=args.weights, model=args.model, img_size=args.img_size,
            device=args.device, batch_size=args.batch_size, workers=args.workers, seed=args.seed, progress=True,
            data=options, **chosen,
        )  # fmt: skip
    res["dataset"] = args.dataset
    if not args.checkpoint:
        res["source"] = f"random init ({args.backbone})"
    out, kept = _result_path(args, protocol.result_file(protocol.Options(**chosen)))
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
    if args.json:
        print(json.dumps(res))
    else:
        lines = protocol.describe(res, protocol.Options(**chosen))
        print("\n".join(lines[:-1] + [f"{lines[-1]} on {args.dataset} ({res['train_images']} train / "
                                      f"{res['test_images']} test), {res['source']}"]))  # fmt: skip
        print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%" + (f"  -> {out}" if out else ""))
    if kept:
        print(f"the previous result was kept as {kept}")
    return 0


def _result_path(args: argparse.Namespace, name: str | None) -> tuple[Path | None, Path | None]:
    """Where the result goes (``--out``, or the protocol's file in a run folder) and where an
    earlier one there was moved to (a trial must not erase an earlier result)."""
    if args.out:
        return Path(args.out), None
    if not (name and args.checkpoint and Path(args.checkpoint).is_dir()):
        return None, None
    out = Path(args.checkpoint) / name
    if not out.is_file():
        return out, None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(out.stat().st_mtime))
    return out, out.rename(out.with_name(f"{out.stem}.{stamp}.json"))
