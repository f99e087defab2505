"""``sslkd info``: versions, device, threads, and what sslkd offers (methods, backbones, datasets)."""

from __future__ import annotations

import argparse

from sslkd.lazy import lazy_import

backbones = lazy_import("sslkd.models.backbone")
datasets = lazy_import("sslkd.data.registry")
devices = lazy_import("sslkd.device")
methods = lazy_import("sslkd.methods")  # importing the package registers every method


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", metavar="PATTERN", help="list the timm models matching PATTERN (e.g. vit, convnext)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.models is not None:
        return list_models(args.models)
    env = devices.environment()
    bf16 = "yes" if env["native_bf16"] == "True" else "no (precision auto uses fp32)"
    print(f"sslkd {env['sslkd']}  python {env['python']}  {env['platform']}")
    print(f"torch {env['torch']}  torchvision {env['torchvision']}  timm {env['timm']}")
    print(f"device: {env['device']}  threads: {env['threads']}  cpu: {env['cpu_capability']}, native bf16: {bf16}")
    print(f"methods: {', '.join(methods.METHODS)}")
    print(f"backbones: {', '.join(backbones.BACKBONES)}, or any timm model (sslkd info --models PATTERN)")
    print(f"datasets: {', '.join(datasets.DATASETS)}")
    return 0


def list_models(pattern: str) -> int:
    """Backbones matching ``pattern``: timm's ViT family (a mask token: every method) and the
    others (read through forward_features: DINO, MoCo v3, MOKD, SEED; not iBOT, MAE, DMT)."""
    vits, others = backbones.matching_models(pattern)
    print(f"ViT family, every method ({len(vits)}): {', '.join(vits) or '-'}")
    print(f"other models, not iBOT/MAE/DMT ({len(others)}): {', '.join(others) or '-'}")
    print("model.backbone takes any of them; model.patch_size sets a ViT's patch")
    return 0
