"""``sslkd eval knn|linear|finetune``: accuracy of a frozen (or fine-tuned) backbone on a
dataset's held-out split, from a run or a random initialisation."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sslkd.commands.args import add_eval_args, eval_data_options, model_flag, positive, positive_list
from sslkd.lazy import lazy_import

api = lazy_import("sslkd.api")


def add_arguments(p: argparse.ArgumentParser) -> None:
    protocols = p.add_subparsers(dest="protocol", required=True)
    knn = protocols.add_parser("knn", help="weighted kNN (k=10,20,100,200, T=0.07, cosine)")
    add_eval_args(knn)
    knn.add_argument(
        "--k",
        type=positive_list(int),
        default=None,
        help="neighbours, one or a list (default: 10,20,100,200, MOKD's protocol, DINO's 20 among them); "
        "prints each and the best",
    )
    knn.add_argument("--temperature", type=positive(float), default=0.07, help="temperature of the vote")
    lin = protocols.add_parser("linear", help="linear probe on frozen features")
    add_eval_args(lin)
    lin.add_argument("--epochs", type=positive(int), default=100, help="probe training epochs")
    lin.add_argument("--lr", type=float, default=0.1, help="probe learning rate (SGD, cosine)")
    ft = protocols.add_parser("finetune", help="full fine-tuning (AdamW, layer-wise lr decay, warm-up + cosine)")
    add_eval_args(ft)
    ft.add_argument("--epochs", type=positive(int), default=30, help="fine-tuning epochs")
    ft.add_argument("--lr", type=float, default=1e-3, help="base rate for batch 256 (scaled with the batch)")
    ft.add_argument("--layer-decay", type=float, default=0.75, help="layer-wise learning-rate decay")
    ft.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    ft.add_argument("--warmup-epochs", type=float, default=3.0, help="linear warm-up epochs")
    ft.add_argument("--label-fraction", type=float, default=1.0, help="class-balanced share of the labels (0.01, 0.1)")
    ft.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="autocast precision")
    ft.add_argument(
        "--out",
        default=None,
        help="JSON result (default: RUN/finetune[_<fraction>].json; "
        "an earlier one there is kept, renamed with its date)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = eval_data_options(args)
    data = api.eval_datasets(args.dataset, args.root, args.img_size, **options)
    if args.checkpoint:
        source = args.checkpoint
    else:
        source = api.random_backbone(args.backbone, data[0].img_size, args.patch_size, data[0].num_channels, args.seed)
    kw = dict(
        root=args.root,
        which=args.weights,
        model=args.model,
        img_size=args.img_size,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        seed=args.seed,
        progress=True,
    )
    if args.protocol == "knn":
        kw.update(temperature=args.temperature, **({"k": args.k} if args.k else {}))
    elif args.protocol == "linear":
        kw.update(epochs=args.epochs, lr=args.lr)
    else:
        kw.update(
            epochs=args.epochs,
            lr=args.lr,
            finetune_args=dict(
                layer_decay=args.layer_decay,
                weight_decay=args.weight_decay,
                warmup_epochs=args.warmup_epochs,
                label_fraction=args.label_fraction,
                precision=args.precision,
            ),
        )
    with model_flag(f"--model {args.model}"):
        res = api.evaluate(source, data, args.protocol, **kw)
    res["dataset"] = args.dataset
    if not args.checkpoint:
        res["source"] = f"random init ({args.backbone})"
    if args.protocol == "finetune":
        return _finetune_output(args, res)
    if args.json:
        print(json.dumps(res))
        return 0
    for k, r in res.get("per_k", {}).items():
        print(f"k={k}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%")
    if args.protocol == "knn":
        ks = res.get("per_k", {})
        proto = f"kNN k={res['k']}{' (best of ' + ','.join(ks) + ')' if ks else ''} T={args.temperature}"
    else:
        proto = f"linear probe {args.epochs} epochs"
    print(f"{proto} on {args.dataset} ({res['train_images']} train / {res['test_images']} test), {res['source']}")
    print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%")
    return 0


def _finetune_output(args: argparse.Namespace, res: dict) -> int:
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
        print(
            f"fine-tuning {args.epochs} epochs on {res['train_images']} labelled {args.dataset} images "
            f"({100 * args.label_fraction:g}% of the labels), {res['source']}"
        )
        print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%" + (f"  -> {out}" if out else ""))
    if kept:
        print(f"the previous result was kept as {kept}")
    return 0
