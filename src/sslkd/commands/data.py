"""``sslkd data pack FOLDER --out DIR``: an image folder as WebDataset tar shards (``data.name: shards``)."""

from __future__ import annotations

import argparse
import json

from sslkd.commands.args import positive
from sslkd.lazy import lazy_import

packing = lazy_import("sslkd.data.pack")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    pack = sub.add_parser(
        "pack",
        help="write WebDataset tar shards from any image folder (resumable)",
        description="Write FOLDER (train/ + val/ or test/, or one folder of any depth) as WebDataset tar "
        "shards in DIR, with the labels of its class folders; rerun the same command to finish an "
        "interrupted packing. Train on them with --set data.name=shards data.root=DIR.",
    )
    pack.add_argument("folder", help="the image folder")
    pack.add_argument("--out", required=True, help="the shard folder to write")
    pack.add_argument("--shard-mb", type=positive(float), default=256.0, help="target shard size in MiB (default 256)")
    pack.add_argument("--shard-size", type=positive(int), help="images per shard (instead of --shard-mb)")
    pack.add_argument("--seed", type=int, default=0, help="seed of the order of images across shards")
    pack.add_argument(
        "--labels", choices=["auto", "folders", "none"], default="auto", help="class folders, as data.labels"
    )
    pack.add_argument("--quiet", action="store_true", help="no progress bar")
    pack.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    info = packing.pack_folder(
        args.folder, args.out, args.shard_size, args.shard_mb, args.seed, args.labels, progress=not args.quiet
    )
    meta = info["sslkd"]
    summary = {
        "out": args.out,
        "splits": {s: {"images": v["num_samples"], "shards": len(v["filenames"])} for s, v in info["splits"].items()},
        "classes": len(meta["classes"]),
        "skipped": meta["skipped"],
    }
    print(json.dumps(summary))
    return 0
