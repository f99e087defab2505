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
from sslkd.models import BACKBONES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:  # noqa: ARG001 - every command takes its arguments
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
