"""``sslkd info``: versions, device, threads, and what sslkd offers (methods, backbones, datasets)."""

from __future__ import annotations

import argparse
import platform

import timm
import torch
import torchvision

from sslkd import __version__
from sslkd.data import DATASETS
from sslkd.device import native_bf16
from sslkd.methods import METHODS
from sslkd.models import BACKBONES, is_vit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", metavar="PATTERN", help="list the timm models matching PATTERN (e.g. vit, convnext)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.models is not None:
        return list_models(args.models)
    cuda = torch.cuda.is_available()
    print(f"sslkd {__version__}  python {platform.python_version()}  {platform.machine()}")
    print(f"torch {torch.__version__}  torchvision {torchvision.__version__}  timm {timm.__version__}")
    print(
        f"device: {'cuda: ' + torch.cuda.get_device_name(0) if cuda else 'cpu'}  "
        f"threads: {torch.get_num_threads()}  cpu: {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16: {'yes' if native_bf16(torch.device('cpu')) else 'no (precision auto uses fp32)'}"
    )
    print(f"methods: {', '.join(METHODS)}")
    print(f"backbones: {', '.join(BACKBONES)}")
    print(f"datasets: {', '.join(DATASETS)}")
    return 0


def list_models(pattern: str) -> int:
    """Backbones matching ``pattern``: timm's ViT family (a mask token: every method) and the
    others (read through forward_features: DINO, MoCo v3, MOKD, SEED; not iBOT, MAE, DMT)."""
    names = sorted(set(timm.list_models(f"*{pattern}*")) | {a for a in BACKBONES if pattern in a})
    vits = [n for n in names if is_vit(n)]
    others = [n for n in names if not is_vit(n)]
    print(f"ViT family, every method ({len(vits)}): {', '.join(vits) or '-'}")
    print(f"other models, not iBOT/MAE/DMT ({len(others)}): {', '.join(others) or '-'}")
    print("model.backbone takes any of them; model.patch_size sets a ViT's patch")
    return 0
