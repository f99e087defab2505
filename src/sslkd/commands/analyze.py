"""``sslkd analyze consistency|tsne|attention-distance``: MOKD's analyses on any checkpoints."""

from __future__ import annotations

import argparse
import json

from sslkd.commands.args import model_flag, positive, split_model
from sslkd.lazy import lazy_import

analysis = lazy_import("sslkd.eval.analysis")
datasets = lazy_import("sslkd.data")
devices = lazy_import("sslkd.device")
features = lazy_import("sslkd.eval.features")
pretrained = lazy_import("sslkd.pretrained")


def add_arguments(p: argparse.ArgumentParser) -> None:
    kinds = p.add_subparsers(dest="analysis", required=True)
    con = kinds.add_parser("consistency", help="share of test images where two models' kNN predictions agree")
    con.add_argument("checkpoints", nargs=2, help="two runs (RUN or RUN@2)")
    tsn = kinds.add_parser("tsne", help="t-SNE of test features for chosen classes (PNG)")
    tsn.add_argument("checkpoints", nargs=1, help="a run (RUN or RUN@2)")
    tsn.add_argument("--classes", type=int, nargs="*", default=None, help="class indices to show (default: all)")
    dis = kinds.add_parser("attention-distance", help="mean attention distance per layer (PNG)")
    dis.add_argument("checkpoints", nargs="+", help="runs (RUN or RUN@2)")
    dis.add_argument("--images", type=positive(int), default=64, help="test images averaged over")
    for a in (con, tsn, dis):
        a.add_argument("--dataset", default=None, help="default: the checkpoint's dataset")
        a.add_argument("--root", default=None, help="dataset folder")
        a.add_argument("--weights", default="teacher", choices=["teacher", "student"], help="which weights")
        a.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
        if a is not con:
            a.add_argument("--out", default=f"{a.prog.split()[-1]}.png", help="PNG file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    device = devices.resolve_device(args.device)
    pres = []
    for spec in args.checkpoints:
        path, model = split_model(spec)
        with model_flag(spec):
            pres.append((spec, pretrained.load_pretrained(path, args.weights, model)))
    first = pres[0][1]
    name = args.dataset or first.config.data.name
    root = args.root or (first.config.data.root if not args.dataset else None)
    own = first.config.data.options if name == first.config.data.name else None  # the source's options (hf)
    test = datasets.get_dataset(name, "test", root=root, img_size=first.img_size, options=own)
    for spec, pre in pres:
        if pre.num_channels != test.num_channels:
            raise ValueError(
                f"{spec} was trained on {pre.num_channels}-channel images but {name} has {test.num_channels} channels"
            )
    if args.analysis == "attention-distance":
        images = datasets.view_tensors(test, range(min(args.images, len(test))), first.img_size)
        curves = {
            spec: analysis.attention_distance(pre.backbone.cpu(), images, pre.mean, pre.std) for spec, pre in pres
        }
        for spec, d in curves.items():
            print(f"{spec}: mean distance per layer (px) " + " ".join(f"{v:.1f}" for v in d.mean(1)))
        print(analysis.plot_attention_distance(curves, args.out))
        return 0
    feats = [
        features.extract_features(pre.backbone.to(device), test, pre.mean, pre.std, device=device) for _, pre in pres
    ]
    if args.analysis == "tsne":
        print(
            analysis.plot_tsne(
                feats[0][0], feats[0][1], args.out, args.classes, test.classes, title=f"{args.checkpoints[0]} on {name}"
            )
        )
        return 0
    train = datasets.get_dataset(name, "train", root=root, img_size=first.img_size, options=own)
    tr = [
        features.extract_features(pre.backbone.to(device), train, pre.mean, pre.std, device=device) for _, pre in pres
    ]
    res = analysis.prediction_consistency(tr[0][0], feats[0][0], tr[1][0], feats[1][0], tr[0][1], feats[0][1])
    print(json.dumps({"a": args.checkpoints[0], "b": args.checkpoints[1], **{k: round(v, 2) for k, v in res.items()}}))
    return 0


def embed(pre, dataset, device):
    """``(features, labels)`` of ``dataset`` by a loaded run's backbone, normalised as it was trained."""
    return features.extract_features(pre.backbone.to(device), dataset, pre.mean, pre.std, device=device)
