"""How long a planned run would take here, before it starts (a first run's warning).

The backbones' forward FLOPs per view are counted on the meta device (shapes only: no memory,
no compute, well under a second); a step costs about three forward passes of every crop through
each trained model (forward + backward) and one of the global crops through its EMA teacher.
The device's rate is a measured matrix product at :data:`EFFICIENCY` of it, the share a training
step reached in ``sslkd bench`` runs here. Heads, losses and the data pipeline are left out: on
this repository's 2-core CPU it came 4-15% under the measured step time of DINO, iBOT and MOKD
runs (benchmarks/results/estimate_calibration_cpu.json), enough to tell an hour from a month."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from sslkd.config import Config
from sslkd.models.backbone import ModelConfig, build_backbone, is_vit

EFFICIENCY = 0.6  # achieved / matmul FLOP/s of a training step on a CPU (sslkd bench: ~95 of ~150 GFLOP/s)


@functools.lru_cache(maxsize=32)
def forward_gflops(backbone: str, patch_size: int, small_stem: bool, depth: int | None, size: int, chans: int) -> float:
    """GFLOPs of one image's forward pass at ``size`` px (2 x multiply-adds)."""
    with torch.device("meta"):
        net = build_backbone(
            backbone, img_size=size, patch_size=patch_size, in_chans=chans, small_stem=small_stem, depth=depth
        )
        x = torch.empty(1, chans, size, size)
    with FlopCounterMode(display=False) as fc:
        net(x)
    return fc.get_total_flops() / 1e9


def device_gflops(device: torch.device) -> float:
    """Best GFLOP/s of a float32 1024 x 1024 product on ``device`` (~0.1 s on a CPU)."""
    n = 1024
    a = torch.randn(n, n, device=device)
    a @ a
    best = 0.0
    for _ in range(4):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


@dataclass
class Estimate:
    hours: float
    steps: int
    images_per_step: int
    gflop_per_image: float
    device_gflops: float

    side: int

    def describe(self, cfg: Config) -> str:
        models = " + ".join(_name(m) for m in _models(cfg))
        g, loc = _sizes(cfg, self.side)
        crops = f"2 x {g} px" + (f" + {cfg.aug.local_crops_number} x {loc} px" if cfg.aug.local_crops_number else "")
        return (
            f"~{self.hours:,.0f} h here ({self.steps:,} steps of {self.images_per_step} images, {models}, "
            f"crops {crops}; this device ~{self.device_gflops:,.0f} GFLOP/s in a matrix product)"
        )


def _models(cfg: Config) -> list[ModelConfig]:
    second = getattr(cfg.method, "model2", None)  # a method training two models names the second so
    return [cfg.model] + ([second] if isinstance(second, ModelConfig) else [])


def _name(m: ModelConfig) -> str:
    return f"{m.backbone}/{m.patch_size}" if is_vit(m.backbone) else m.backbone


def _sizes(cfg: Config, side: int) -> tuple[int, int]:
    """The global and local crop sizes of ``cfg`` on images of ``side`` px (as the loaders size them)."""
    g = cfg.aug.global_crops_size or cfg.data.img_size or side
    return g, cfg.aug.local_crops_size or max(8, round(g * 3 / 7))


def estimate(cfg: Config, images: int, side: int, channels: int, device: torch.device | str) -> Estimate:
    """The planned run's duration on ``device`` over ``images`` training images of ``side`` px
    (the dataset's size where ``data.img_size`` is unset)."""
    g, loc = _sizes(cfg, side)
    per_image = 0.0
    for m in _models(cfg):
        patch = m.patch_size if is_vit(m.backbone) else 1  # crops are cut in whole patches

        def fwd(size: int, m: ModelConfig = m, patch: int = patch) -> float:
            size = max(patch, size // patch * patch)
            return forward_gflops(m.backbone, m.patch_size, m.small_stem, m.depth, size, channels)

        student = 2 * fwd(g) + cfg.aug.local_crops_number * fwd(loc)
        per_image += 3 * student + 2 * fwd(g)  # forward + backward, and the teacher's globals
    t = cfg.train
    steps = max(1, images // t.batch_size) * t.epochs
    if t.max_steps is not None:
        steps = min(steps, t.max_steps)
    rate = device_gflops(torch.device(device))
    seconds = steps * t.batch_size * per_image / (rate * EFFICIENCY)
    return Estimate(seconds / 3600, steps, t.batch_size, per_image, rate, side)
