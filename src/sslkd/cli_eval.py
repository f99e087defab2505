"""Handlers of the evaluation commands (``sslkd eval``, ``analyze``, ``attention``): load the
checkpoint or build a random backbone, run the protocol, print or save the result. Errors are
raised as ``ValueError``/``DatasetError``/``CheckpointError`` for ``sslkd.cli.main`` to report."""

from __future__ import annotations

import json
from pathlib import Path
import time


def run_eval(args) -> int:
    import torch

    from sslkd.data import get_dataset, held_out
    from sslkd.eval import extract_features, knn_classify, linear_probe
    from sslkd.models import build_backbone
    from sslkd.pretrained import load_pretrained
    from sslkd.device import resolve_device

    device = resolve_device(args.device)
    train = get_dataset(args.dataset, "train", root=args.root, img_size=args.img_size)
    if not train.num_classes:
        raise ValueError(f"{train.name} has no labels (no unambiguous class folders): kNN, linear and "
                         f"fine-tuning need root/train/<class>/<image> and root/val/<class>/<image>")
    test = held_out(args.dataset, train, root=args.root, img_size=args.img_size)
    if args.checkpoint:
        pre = load_pretrained(args.checkpoint, args.weights, args.model)
        if pre.num_channels != train.num_channels:
            raise ValueError(f"{pre.path} was trained on {pre.num_channels}-channel images but "
                             f"{args.dataset} has {train.num_channels} channels")
        backbone, mean, std, source = pre.backbone, pre.mean, pre.std, str(pre.path)
        size = args.img_size or pre.img_size
        if pre.backbone.is_vit is False and train.img_size != size:
            size = train.img_size  # CNNs take any size; keep the data's
        elif pre.backbone.is_vit and size % pre.backbone.patch_size:
            raise ValueError(f"--img-size {size} is not a multiple of the ViT's patch size {pre.backbone.patch_size}")
    else:
        torch.manual_seed(args.seed)
        size = train.img_size
        backbone = build_backbone(args.backbone, size, args.patch_size, train.num_channels)
        mean, std, source = train.mean, train.std, f"random init ({args.backbone})"
    backbone.to(device)
    if args.protocol == "finetune":
        return run_finetune(args, backbone, train, test, mean, std, size, device, source)
    kw = dict(mean=mean, std=std, device=device, batch_size=args.batch_size, size=size, progress=True,
              num_workers=args.workers)
    ftr, ltr = extract_features(backbone, train, **kw)
    fte, lte = extract_features(backbone, test, **kw)
    if args.protocol == "knn":
        per_k = {k: knn_classify(ftr, ltr, fte, lte, k, args.temperature, train.num_classes) for k in args.k}
        best = max(per_k, key=lambda k: per_k[k]["top1"])  # MOKD reports the best of k in {10, 20, 100, 200}
        res = {**per_k[best], "k": best}
        if len(per_k) > 1:
            res["per_k"] = {str(k): r for k, r in per_k.items()}
            if not args.json:
                for k, r in per_k.items():
                    print(f"k={k}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%")
        proto = f"kNN k={best}{' (best of ' + ','.join(map(str, per_k)) + ')' if len(per_k) > 1 else ''} " \
                f"T={args.temperature}"
    else:
        res = linear_probe(ftr, ltr, fte, lte, train.num_classes, args.epochs, args.lr, seed=args.seed)
        proto = f"linear probe {args.epochs} epochs"
    if args.json:
        print(json.dumps({"protocol": args.protocol, "source": source, "dataset": args.dataset, **res}))
    else:
        print(f"{proto} on {args.dataset} ({len(train)} train / {len(test)} test), {source}")
        print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%")
    return 0


def run_finetune(args, backbone, train, test, mean, std, size, device, source) -> int:
    from sslkd.eval.finetune import finetune

    res = finetune(backbone, train, test, mean, std, size, args.epochs, min(args.batch_size, len(train)), args.lr,
                   args.layer_decay, args.weight_decay, args.warmup_epochs, label_fraction=args.label_fraction,
                   precision=args.precision, device=device, seed=args.seed, progress=True, num_workers=args.workers)
    res = {"protocol": "finetune", "source": source, "dataset": args.dataset, **res}
    out = args.out
    if out is None and args.checkpoint and Path(args.checkpoint).is_dir():
        suffix = "" if args.label_fraction == 1 else f"_{args.label_fraction:g}"
        out = Path(args.checkpoint) / f"finetune{suffix}.json"
    kept = None
    if out and args.out is None and Path(out).is_file():  # a trial must not erase an earlier result
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(Path(out).stat().st_mtime))
        kept = Path(out).rename(Path(out).with_name(f"{Path(out).stem}.{stamp}.json"))
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
    if args.json:
        print(json.dumps(res))
    else:
        print(f"fine-tuning {args.epochs} epochs on {res['train_images']} labelled {args.dataset} images "
              f"({100 * args.label_fraction:g}% of the labels), {source}")
        print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%" + (f"  -> {out}" if out else ""))
    if kept:
        print(f"the previous result was kept as {kept}")
    return 0


def run_analyze(args) -> int:
    from sslkd.data import get_dataset, view_tensors
    from sslkd.device import resolve_device
    from sslkd.eval import extract_features
    from sslkd.eval import analysis
    from sslkd.pretrained import load_pretrained

    device = resolve_device(args.device)
    pres = []
    for spec in args.checkpoints:
        path, model = split_model(spec)
        pres.append((spec, load_pretrained(path, args.weights, model)))
    first = pres[0][1]
    name = args.dataset or first.config.data.name
    root = args.root or (first.config.data.root if not args.dataset else None)
    test = get_dataset(name, "test", root=root, img_size=first.img_size)
    for spec, pre in pres:
        if pre.num_channels != test.num_channels:
            raise ValueError(f"{spec} was trained on {pre.num_channels}-channel images but {name} has "
                             f"{test.num_channels} channels")
    if args.analysis == "attention-distance":
        images = view_tensors(test, range(min(args.images, len(test))), first.img_size)
        curves = {spec: analysis.attention_distance(pre.backbone.cpu(), images, pre.mean, pre.std)
                  for spec, pre in pres}
        for spec, d in curves.items():
            print(f"{spec}: mean distance per layer (px) " + " ".join(f"{v:.1f}" for v in d.mean(1)))
        print(analysis.plot_attention_distance(curves, args.out))
        return 0
    feats = [extract_features(pre.backbone.to(device), test, pre.mean, pre.std, device=device) for _, pre in pres]
    if args.analysis == "tsne":
        print(analysis.plot_tsne(feats[0][0], feats[0][1], args.out, args.classes, test.classes,
                                 title=f"{args.checkpoints[0]} on {name}"))
        return 0
    train = get_dataset(name, "train", root=root, img_size=first.img_size)
    tr = [extract_features(pre.backbone.to(device), train, pre.mean, pre.std, device=device) for _, pre in pres]
    res = analysis.prediction_consistency(tr[0][0], feats[0][0], tr[1][0], feats[1][0], tr[0][1], feats[0][1])
    print(json.dumps({"a": args.checkpoints[0], "b": args.checkpoints[1], **{k: round(v, 2) for k, v in res.items()}}))
    return 0


def split_model(spec: str) -> tuple[str, int]:
    """``RUN`` or ``RUN@<n>`` (MOKD's model n) -> (path, n)."""
    path, _, model = spec.partition("@")
    if model and not model.isdigit():
        raise ValueError(f"{spec}: expected RUN or RUN@<model number> (RUN@2: MOKD's second model)")
    return path, int(model or 1)


def run_attention(args) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from sslkd.data import get_dataset, view_tensors
    from sslkd.eval.attention import cls_attention, plot_attention
    from sslkd.pretrained import load_pretrained

    path, model = split_model(args.checkpoint)
    pre = load_pretrained(path, args.weights, model)
    if not getattr(pre.backbone, "is_vit", False):
        other = " (a MOKD run: RUN@2 selects its second model)" if pre.config.method.name == "mokd" and model == 1 else ""
        raise ValueError(f"{args.checkpoint}: attention maps need a ViT backbone, this model is a CNN{other}")
    size = pre.img_size
    if args.images:
        arrays = []
        for path in args.images:
            try:
                with Image.open(path) as im:
                    im = im.convert("L" if pre.num_channels == 1 else "RGB").resize((size, size), Image.BICUBIC)
                    arrays.append(np.asarray(im, dtype=np.uint8).reshape(size, size, pre.num_channels))
            except OSError as e:
                raise ValueError(f"cannot read image {path}: {e}") from e
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    else:
        name = args.dataset or pre.config.data.name
        ds = get_dataset(name, "test", root=args.root or pre.config.data.root, img_size=size)
        if ds.num_channels != pre.num_channels:
            raise ValueError(f"{name} has {ds.num_channels} channels, the checkpoint expects {pre.num_channels}")
        bad = [i for i in args.indices if not 0 <= i < len(ds)]
        if bad:
            raise ValueError(f"--indices {' '.join(map(str, bad))}: {name}'s test split has images 0..{len(ds) - 1}")
        images = view_tensors(ds, args.indices, size)
    maps = cls_attention(pre.backbone, images, pre.mean, pre.std, args.threshold)
    print(plot_attention(images, maps, args.out, f"{pre.path} ({args.weights}), step {pre.step}"))
    return 0
