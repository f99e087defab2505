"""Linear probe on frozen features, with a learning-rate sweep in one pass.

Features are extracted once (no augmentation) and standardised with the training set's statistics
(MAE's BatchNorm-without-affine, folded into the data). One linear classifier per learning rate is
trained with SGD (momentum 0.9, cosine schedule, cross-entropy) on the same batches (DINOv2's linear
evaluation trains its grid in one pass too); the rate is chosen on a class-balanced part of the
training split held out from fitting (``val_fraction``), never on the test split. The chosen rate
is then fitted on the whole training split and scored on the test split. One rate: no sweep, fitted on everything.
This is the fast protocol; the augmented protocol of DINO trains the same layer on random crops
and gives slightly higher numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslkd.eval.metrics import topk_accuracy
from sslkd.eval.registry import Features, Protocol, register
from sslkd.eval.training import train_steps, validation_split
from sslkd.schedules import cosine_schedule
from sslkd.schema import NonNegativeFloat, Positive, PositiveFloat, Probability

# the swept rates, half a decade apart around the former fixed 0.1 (standardised features: a rate
# that diverges scores low on the held-out images and is not chosen)
LINEAR_LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    lr: float | Sequence[float] = LINEAR_LRS,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    val_fraction: float = 0.1,
    progress: bool = False,
) -> dict:
    """Top-1/top-5 test accuracy (%) of a linear classifier trained on ``train_features``, and the
    learning rate ``lr`` it used; with several rates, the one of the best top-1 on the held-out
    ``val_fraction`` of the training split (each rate's under ``val_top1``)."""
    lrs = [float(lr)] if isinstance(lr, (int, float)) else [float(v) for v in lr]
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    fit = dict(num_classes=num_classes, epochs=epochs, weight_decay=weight_decay, batch_size=batch_size, seed=seed)
    out: dict = {}
    if len(lrs) > 1:
        if not 0 < val_fraction < 1:
            raise ValueError(f"a learning-rate sweep chooses on held-out training images: val_fraction {val_fraction}")
        fit_idx, val_idx = validation_split(train_labels, val_fraction, seed)
        heads, scale = _fit(train_features[fit_idx], train_labels[fit_idx], lrs, progress=progress, **fit)
        with torch.no_grad():
            xval = scale(train_features[val_idx])
            val = [topk_accuracy(h(xval), train_labels[val_idx])["top1"] for h in heads]
        out["val_top1"] = {f"{v:g}": a for v, a in zip(lrs, val)}
        lrs = [lrs[max(range(len(lrs)), key=lambda i: (val[i], -i))]]  # ties: the smaller rate
    (head,), scale = _fit(train_features, train_labels, lrs, progress=progress, **fit)
    with torch.no_grad():
        res = topk_accuracy(head(scale(test_features)), test_labels)
    return {**res, "lr": lrs[0], **out}


def _fit(x, y, lrs: list[float], *, num_classes, epochs, weight_decay, batch_size, seed, progress):
    """One zero-initialised linear layer per rate in ``lrs``, trained on the same batches of the
    standardised ``x``; returns the layers and the standardisation."""
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)

    def scale(f: torch.Tensor) -> torch.Tensor:
        return (f - mean) / std

    xs = scale(x)
    heads = nn.ModuleList(nn.Linear(x.shape[1], num_classes) for _ in lrs)
    for p in heads.parameters():
        nn.init.zeros_(p)
    groups = [{"params": h.parameters(), "lr": v} for h, v in zip(heads, lrs)]
    opt = torch.optim.SGD(groups, lr=lrs[0], momentum=0.9, weight_decay=weight_decay)
    steps = max(1, -(-len(xs) // batch_size))
    g = torch.Generator().manual_seed(seed)

    def batches(_epoch: int):
        perm = torch.randperm(len(xs), generator=g)
        for i in range(0, len(xs), batch_size):
            idx = perm[i : i + batch_size]
            yield xs[idx], y[idx]

    def loss_of(xb, yb):  # each head's own mean cross-entropy: the sum's gradient is each one's
        return sum(F.cross_entropy(h(xb), yb) for h in heads)

    desc = "linear probe" + (f" ({len(lrs)} rates)" if len(lrs) > 1 else "")
    train_steps(
        loss_of, opt, epochs, batches, steps, cosine_schedule(1.0, 0.0, epochs * steps), desc=desc, progress=progress
    )
    return list(heads), scale


@dataclass
class LinearOptions:
    epochs: Positive = field(default=100, metadata={"help": "probe training epochs"})
    lr: tuple[PositiveFloat, ...] = field(
        default=LINEAR_LRS,
        metadata={
            "help": "SGD rates (cosine) swept in one pass, chosen on held-out training images; one rate: no sweep"
        },
    )
    val_fraction: Probability = field(
        default=0.1, metadata={"help": "share of the training split held out to choose the rate"}
    )
    weight_decay: NonNegativeFloat = field(default=0.0, metadata={"help": "L2 weight decay of the probe"})


@register
class LinearProtocol(Protocol):
    name = "linear"
    help = "linear probe on frozen features (SGD, learning rates swept on held-out training images)"
    Options = LinearOptions
    title, chosen = "Sup linear", "lr"

    def score(self, features: Features, options: LinearOptions) -> dict:
        f = features
        return linear_probe(
            f.train, f.train_labels, f.test, f.test_labels, f.num_classes, options.epochs, options.lr,
            options.weight_decay, seed=f.seed, val_fraction=options.val_fraction,
        )  # fmt: skip

    def describe(self, result: dict, options: LinearOptions) -> list[str]:
        val = result.get("val_top1", {})
        lines = [f"lr={v}: top-1 {a:.2f}% on held-out training images" for v, a in val.items()]
        chosen = f"lr {result['lr']:g}" + (f" (best of {','.join(val)})" if val else "")
        return [*lines, f"linear probe {options.epochs} epochs, {chosen}"]
