"""``sslkd export RUN --out DIR``: the backbone alone, as safetensors + timm config.json, or ONNX."""

from __future__ import annotations

import argparse
import json

from sslkd.commands.args import model_flag, split_model
from sslkd.lazy import lazy_import

exporting = lazy_import("sslkd.export")
FORMATS = ("safetensors", "timm", "onnx")  # sslkd.export.FORMATS, spelled here so that --help needs no PyTorch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="run folder or checkpoint (RUN@2: MOKD's second model)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--weights", default="teacher", choices=["teacher", "student"], help="which weights of the run")
    p.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=list(FORMATS),
        help="repeatable; default safetensors (which timm loads: the same files)",
    )
    p.add_argument("--force", action="store_true", help="write into a folder that holds files already")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    src, model = split_model(args.source)
    with model_flag(args.source):
        formats = tuple(args.formats or ["safetensors"])
        files = exporting.export(src, args.out, args.weights, model, formats, force=args.force)
    print(json.dumps({k: str(v) for k, v in files.items()}))
    return 0
