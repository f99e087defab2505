"""``sslkd demo``: DINO on scikit-learn's digits (no download), then a kNN table comparing raw
pixels, the random initialisation and the pretrained backbone."""

from __future__ import annotations

import time

import torch

from sslkd.api import load_backbone, pretrain
from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.eval import evaluate, knn_classify
from sslkd.methods import build_method

# The embedded default: a 4-block ViT-Tiny/4 on 16x16 digits, about 90 s on 2 CPU cores. Tuned
# for a ~270-step run (kNN top-1 81-85% over four seeds vs ~52% at random init): a BN head keeps
# it out of DINO's uniform collapse; a fast, constant teacher momentum (0.97) because 0.99 -> 1
# barely moves the teacher in so few steps; the learning rate stays high (min_lr) because a short
# cosine decays too early; no blur or solarisation, which destroy 16x16 digits.
DEMO_CONFIG = {
    "name": "demo-dino-digits",
    "seed": 0,
    "device": "cpu",
    "data": {"name": "digits", "img_size": 16},
    "aug": {
        "global_crops_scale": [0.5, 1.0],
        "local_crops_number": 0,
        "flip_p": 0.0,
        "grayscale_p": 0.0,
        "color_jitter_p": 0.5,
        "blur_p": [0.0, 0.0, 0.0],
        "solarize_p": 0.0,
    },
    "model": {"backbone": "vit_tiny", "patch_size": 4, "depth": 4, "drop_path_rate": 0.0},
    "method": {
        "name": "dino",
        "out_dim": 1024,
        "hidden_dim": 512,
        "bottleneck_dim": 128,
        "use_bn_in_head": True,
        "teacher_temp": 0.04,
        "warmup_teacher_temp": 0.04,
    },
    "train": {
        "epochs": 12,
        "batch_size": 64,
        "base_lr": 2e-3,
        "min_lr": 5e-4,
        "warmup_epochs": 2,
        "weight_decay": 0.04,
        "weight_decay_end": 0.1,
        "momentum_teacher": 0.97,
        "momentum_teacher_end": 0.97,
        "freeze_last_layer": 1,
        "log_every": 5,
    },
    "eval": {"knn_every": 0},
}


def run_demo(output_dir: str = "runs/demo", overrides: list[str] | None = None, progress: bool = True) -> dict:
    start = time.perf_counter()
    cfg = load_config(None, [f"output_dir={output_dir}"] + list(overrides or []), base=DEMO_CONFIG)
    train = get_dataset("digits", "train", img_size=cfg.data.img_size)
    test = get_dataset("digits", "test", img_size=cfg.data.img_size)
    k, t = cfg.eval.knn_k, cfg.eval.knn_t

    def knn_of(backbone) -> dict:
        return evaluate(backbone, train, test, {"knn": {"k": k, "temperature": t}})["knn"]

    raw = knn_classify(
        train.tensors()[0].flatten(1).float(),
        torch.from_numpy(train.labels),
        test.tensors()[0].flatten(1).float(),
        torch.from_numpy(test.labels),
        k,
        t,
        10,
    )
    torch.manual_seed(cfg.init_seed)
    random_init = knn_of(build_method(cfg, train.num_channels, train.img_size).eval_backbone("teacher"))
    run = pretrain(cfg, progress=progress, datasets=(train, test))
    summary = run.summary
    pretrained = knn_of(load_backbone(run))
    rows = [("raw pixels", raw), ("random init", random_init), ("DINO pretrained", pretrained)]
    print(
        f"\nkNN (k={k}, T={t}) on digits test ({len(test)} images), after {summary['step']} steps "
        f"in {time.perf_counter() - start:.0f}s:"
    )
    print(f"{'features':<18}{'top-1':>8}{'top-5':>8}")
    for name, res in rows:
        print(f"{name:<18}{res['top1']:>8.2f}{res['top5']:>8.2f}")
    return {name: res for name, res in rows}
