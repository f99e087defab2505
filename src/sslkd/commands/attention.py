"""``sslkd attention RUN``: the last block's CLS attention of every head, as a PNG grid."""

from __future__ import annotations

import argparse

from sslkd.commands.args import model_flag, share, split_model
from sslkd.lazy import lazy_import

attention = lazy_import("sslkd.eval.attention")
datasets = lazy_import("sslkd.data")
methods = lazy_import("sslkd.methods")
pretrained = lazy_import("sslkd.pretrained")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint file or run folder (RUN@2: MOKD's second model)")
    p.add_argument("--dataset", default=None, help="take images from this dataset's test split")
    p.add_argument("--root", default=None, help="dataset folder")
    p.add_argument("--indices", type=int, nargs="*", default=[0, 1, 2, 3], help="test images to show")
    p.add_argument("--images", nargs="*", help="image files instead of --dataset")
    p.add_argument("--threshold", type=share, default=None, help="keep this share of the mass (e.g. 0.6)")
    p.add_argument("--weights", default="teacher", choices=["teacher", "student"], help="which weights of the run")
    p.add_argument("--out", default="attention.png", help="PNG file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path, model = split_model(args.checkpoint)
    with model_flag(args.checkpoint):
        pre = pretrained.load_pretrained(path, args.weights, model)
    if not getattr(pre.backbone, "is_vit", False):
        other = (
            " (this run trains more models: RUN@2 selects the second)"
            if methods.method_class(pre.config.method.name).num_models > 1 and model == 1
            else ""
        )
        raise ValueError(f"{args.checkpoint}: attention maps need a ViT backbone, this model is a CNN{other}")
    size = pre.img_size
    if args.images:
        images = attention.images_from_files(args.images, size, pre.num_channels)
    else:
        name = args.dataset or pre.config.data.name
        own = pre.config.data.options if name == pre.config.data.name else None  # the source's options (hf)
        ds = datasets.get_dataset(name, "test", root=args.root or pre.config.data.root, img_size=size, options=own)
        if ds.num_channels != pre.num_channels:
            raise ValueError(f"{name} has {ds.num_channels} channels, the checkpoint expects {pre.num_channels}")
        bad = [i for i in args.indices if not 0 <= i < len(ds)]
        if bad:
            raise ValueError(f"--indices {' '.join(map(str, bad))}: {name}'s test split has images 0..{len(ds) - 1}")
        images = datasets.view_tensors(ds, args.indices, size)
    maps = attention.cls_attention(pre.backbone, images, pre.mean, pre.std, args.threshold)
    print(attention.plot_attention(images, maps, args.out, f"{pre.path} ({args.weights}), step {pre.step}"))
    return 0
