"""``sslkd bench``: the speed of one real training step and of the data pipeline, on synthetic data.

The step measured is :meth:`sslkd.train.Trainer.train_step` itself (the code a run executes, with
its clipping, optimisers, EMA and centres), on random views already on the device; the data
pipeline (decode-free uint8 images -> multi-crop augmentation -> batches, through the engine's own
loader) is timed separately. One image = one original image with all its views.

The result is one JSON line: images/s, the step split into forward / backward / optimiser / EMA
(from a second, synchronised pass: the split costs synchronisations the headline figure does not
pay), FLOPs per image (``torch.utils.flop_counter``), the achieved FLOP/s as a fraction of this
machine's matmul peak measured in the same run (fp32 and bf16), and peak memory.
"""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sslkd.config import load_config
from sslkd.data.base import ImageArrayDataset
from sslkd.methods import StepInfo
from sslkd.train import Trainer


@dataclass
class BenchArgs:
    method: str = "ibot"
    backbone: str = "vit_tiny"
    img: int = 32
    patch: int = 4
    batch: int = 64
    local_crops: int = 6
    local_img: int = 16
    out_dim: int = 8192
    steps: int = 10
    precision: str = "fp32"
    compile: bool = False
    device: str = "auto"
    data_batches: int = 10
    workers: int | None = None


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant figures (tiny models' figures keep their precision)."""
    return float(f"{x:.{digits}g}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 8) -> float:
    """Best GFLOP/s of an ``n x n @ n x n`` product of ``dtype`` on ``device`` (the machine's
    practical matmul peak: what a well-shaped GEMM reaches here, not the datasheet's)."""
    if device.type == "cuda":
        n = 8192
    else:  # emulated dtypes (bf16 without AVX512-BF16/AMX) are ~100x slower: size the product to ~0.1 s
        n = 128
        while n < 2048:
            a = torch.randn(n, n, device=device).to(dtype)
            t = time.perf_counter()
            a @ a
            if time.perf_counter() - t > 0.05:
                break
            n *= 2
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def _overrides(a: BenchArgs, out: str) -> list[str]:
    ov = [
        f"method.name={a.method}",
        f"model.backbone={a.backbone}",
        f"model.patch_size={a.patch}",
        f"aug.local_crops_number={a.local_crops}",
        f"aug.local_crops_size={a.local_img}",
        f"train.batch_size={a.batch}",
        f"train.precision={a.precision}",
        f"train.compile={str(a.compile).lower()}",
        f"device={a.device}",
        f"output_dir={out}",
        "train.log_every=1000000",
        "eval.knn_every=0",
    ]
    if a.method in ("dino", "ibot"):
        ov.append(f"method.out_dim={a.out_dim}")
    if a.workers is not None:
        ov.append(f"data.num_workers={a.workers}")
    return ov


def synthetic_dataset(n: int, img: int, channels: int = 3) -> ImageArrayDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, img, img, channels), dtype=np.uint8)
    return ImageArrayDataset(
        images,
        rng.integers(0, 10, size=n),
        [str(i) for i in range(10)],
        "synthetic",
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )


def run_bench(a: BenchArgs, extra: list[str] | None = None) -> dict:
    """Measure and return the figures (see the module docstring)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, _overrides(a, out) + list(extra or []))
        n = a.batch * max(a.data_batches + 2, 4)
        trainer = Trainer(cfg, synthetic_dataset(n, a.img), progress=False)
        dev = trainer.device
        g = torch.Generator().manual_seed(0)
        views = [torch.randn(a.batch, 3, a.img, a.img, generator=g).to(dev) for _ in range(2)]
        views += [torch.randn(a.batch, 3, a.local_img, a.local_img, generator=g).to(dev) for _ in range(a.local_crops)]
        if trainer.method.paired_views:
            views = views[:2]
        peaks = {"fp32": matmul_peak(dev, torch.float32), "bf16": matmul_peak(dev, torch.bfloat16)}

        for _ in range(3 if a.compile else 2):  # warm-up (and compilation)
            trainer.train_step([views])
        with FlopCounterMode(display=False) as fc:
            trainer.train_step([views])
        flops = fc.get_total_flops()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            trainer.train_step([views])
        sync(dev)
        step_s = (time.perf_counter() - t0) / a.steps
        split = _split(trainer, views, max(2, a.steps // 2))
        data_ips = _data_rate(trainer, a.data_batches)

    peak = peaks["bf16" if trainer.dtype == torch.bfloat16 else "fp32"]
    achieved = flops / step_s / 1e9
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "config": vars(a) | {"autocast": str(trainer.dtype).replace("torch.", "") if trainer.dtype else "fp32"},
        "img_per_s": _sig(a.batch / step_s),
        "step_s": round(step_s, 4),
        "split_s": {k: round(v, 4) for k, v in split.items()},
        "gflop_per_img": _sig(flops / a.batch / 1e9),
        "achieved_gflops": _sig(achieved),
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "peak_fraction": _sig(achieved / peak),
        "peak_mem_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "data_img_per_s": round(data_ips, 1),
        "data_over_step": round(data_ips / (a.batch / step_s), 2),
    }


def _split(trainer, views: list[torch.Tensor], steps: int) -> dict[str, float]:
    """Seconds per step of forward, backward, optimiser (clipping included) and EMA/centre update,
    each phase closed by a synchronisation (on the CPU ops are synchronous anyway)."""
    dev, t = trainer.device, trainer.cfg.train
    acc = dict.fromkeys(("forward", "backward", "optimizer", "ema"), 0.0)
    for _ in range(steps):
        info = StepInfo(trainer.step, trainer.step / trainer.steps_per_epoch, trainer.total_steps, t.epochs)
        trainer.set_hparams(trainer.step)
        sync(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=trainer.dtype, enabled=trainer.dtype is not None):
            losses, _ = trainer.model(views, info)
        sync(dev)
        t1 = time.perf_counter()
        losses["loss"].backward()
        sync(dev)
        t2 = time.perf_counter()
        trainer.clip_gradients()
        for opt in trainer.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(dev)
        t3 = time.perf_counter()
        trainer.method.on_optimizer_step(float(trainer.schedules.momentum[trainer.step]))
        sync(dev)
        t4 = time.perf_counter()
        trainer.state.step += 1
        for k, v in zip(acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            acc[k] += v / steps
    return acc


def _data_rate(trainer, batches: int) -> float:
    """Images/s delivered by the engine's loader (augmentation included, no training), timed from
    the loader's creation: worker start-up counts, and batches prefetched while the first was
    awaited cannot inflate the figure."""
    sync(trainer.device)
    t0 = time.perf_counter()
    n = 0
    for i, views in enumerate(trainer.batches(0, 0)):
        n += views[0].shape[0]
        if i + 1 >= batches:
            break
    sync(trainer.device)
    return n / (time.perf_counter() - t0)
