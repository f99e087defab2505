"""The peer at equal time: an iBOT built from lightly's public API trained on CIFAR-10 for a
wall-clock budget, then scored by the same weighted kNN (k=20, T=0.07) sslkd uses, beside the
floors (raw pixels, the random network).

The lightly model is ``benchmarks/peer_lightly_ibot.py``'s step (lightly's own iBOT example:
``MaskedVisionTransformerTIMM``, ``DINOProjectionHead``, ``DINOLoss`` + ``IBOTPatchLoss``,
``random_block_mask``, ``update_momentum``) fed by sslkd's multi-crop loader, so that the data,
the augmentation and the evaluation are the same for both and only the method differs. sslkd's
side of the comparison is ``sslkd experiment compare --minutes M`` on the same data. Needs
``pip install -e ".[bench]"`` (lightly).

    python benchmarks/peer_lightly_train.py --minutes 30 --root ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peer_lightly_ibot import lightly_step
from torch.utils.data import DataLoader

from sslkd.bench import BenchArgs
from sslkd.config import AugConfig
from sslkd.data import get_dataset
from sslkd.data.augment import MultiCropDataset, MultiCropTransform, SeededEpochSampler
from sslkd.device import tune_cpu_malloc
from sslkd.eval import extract_features, knn_classify


class _CLS(torch.nn.Module):
    """The CLS feature of a lightly ``MaskedVisionTransformerTIMM`` (what sslkd's kNN embeds)."""

    def __init__(self, bb) -> None:
        super().__init__()
        self.bb = bb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bb.encode(x)[:, 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/cifar10")
    p.add_argument("--minutes", type=float, default=30.0)
    for name, default in (("patch", 8), ("batch", 128), ("local-crops", 4), ("out-dim", 4096), ("workers", 1)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    tune_cpu_malloc()
    torch.manual_seed(0)
    device = torch.device("cpu")
    train = get_dataset("imagefolder", "train", root=args.root)
    test = get_dataset("imagefolder", "test", root=args.root)
    a = BenchArgs(
        backbone="vit_tiny",
        img=32,
        patch=args.patch,
        batch=args.batch,
        local_crops=args.local_crops,
        local_img=16,
        out_dim=args.out_dim,
        precision=args.precision,
    )
    step, (student_bb, teacher_bb) = lightly_step(a, device, lr=args.lr, return_models=True)
    aug = AugConfig(local_crops_number=args.local_crops, local_crops_size=16)
    t = MultiCropTransform.from_config(aug, 32, 3, train.mean, train.std, multiple=args.patch)
    data = MultiCropDataset(train, t)
    kw = dict(mean=train.mean, std=train.std, device=device)
    f_tr, l_tr = extract_features(_CLS(teacher_bb), train, **kw)
    f_te, l_te = extract_features(_CLS(teacher_bb), test, **kw)
    random_init = knn_classify(f_tr, l_tr, f_te, l_te, 20, 0.07, 10)
    pix = [x.tensors()[0].flatten(1).float() for x in (train, test)]
    raw = knn_classify(pix[0], torch.from_numpy(train.labels), pix[1], torch.from_numpy(test.labels), 20, 0.07, 10)
    steps, epoch, tic = 0, 0, time.perf_counter()
    budget = args.minutes * 60
    while time.perf_counter() - tic < budget:
        loader = DataLoader(
            data,
            batch_size=args.batch,
            sampler=SeededEpochSampler(len(train), 0, epoch),
            drop_last=True,
            num_workers=args.workers,
            prefetch_factor=4 if args.workers else None,
        )
        for views, *_ in loader:
            loss = step([v.to(device) for v in views])
            steps += 1
            if steps % 50 == 0:
                print(
                    json.dumps(
                        {
                            "step": steps,
                            "loss": round(float(loss), 4),
                            "minutes": round((time.perf_counter() - tic) / 60, 2),
                        }
                    ),
                    flush=True,
                )
            if time.perf_counter() - tic >= budget:
                break
        epoch += 1
    minutes = (time.perf_counter() - tic) / 60
    f_tr, l_tr = extract_features(_CLS(teacher_bb), train, **kw)
    f_te, l_te = extract_features(_CLS(teacher_bb), test, **kw)
    res = knn_classify(f_tr, l_tr, f_te, l_te, 20, 0.07, 10)
    out = {
        "bench": "peer_lightly_train",
        "date": time.strftime("%Y-%m-%d"),
        "minutes": round(minutes, 2),
        "steps": steps,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "lightly_knn_top1": round(res["top1"], 2),
        "random_init_knn_top1": round(random_init["top1"], 2),
        "raw_pixels_knn_top1": round(raw["top1"], 2),
    }
    print(json.dumps(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
