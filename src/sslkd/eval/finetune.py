"""Full fine-tuning of a pretrained backbone with a linear classifier (the protocol of BEiT/MAE/iBOT,
sized for small images): AdamW, layer-wise learning-rate decay, linear warm-up then cosine,
random-resized-crop + flip augmentation of whole batches on the device, and optionally a
class-balanced fraction of the labels (the 1% / 10% semi-supervised splits).

``lr`` is the base rate for a batch of 256 (scaled linearly with the batch size). Layer-wise decay
gives layer ``i`` of ``L`` the rate ``lr * layer_decay ** (L - i)``: the classifier and the last
block learn fastest, the patch embedding slowest (timm's ``param_groups_layer_decay`` grouping,
so ViTs and CNNs alike). Weight decay skips biases, norms and embeddings' special tokens.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import param_groups_layer_decay
from torch import nn

from sslkd.data.base import ImageSource, balanced_subset
from sslkd.data.batch_augment import BatchMultiCrop
from sslkd.data.recipe import CropRecipe
from sslkd.data.views import eval_batches, supervised_batches
from sslkd.device import autocast_dtype
from sslkd.eval.features import normalize_batch
from sslkd.eval.metrics import TopK
from sslkd.eval.registry import Context, Protocol, register
from sslkd.eval.training import train_steps
from sslkd.models import Backbone
from sslkd.schedules import cosine_schedule
from sslkd.schema import Fraction, NonNegativeFloat, Positive, PositiveFloat


def layer_decay_groups(backbone: Backbone, head: nn.Linear, weight_decay: float, layer_decay: float) -> list[dict]:
    net = getattr(backbone, "vit", None) or getattr(backbone, "net", None) or backbone
    groups = param_groups_layer_decay(
        net,
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        no_weight_decay_list=getattr(net, "no_weight_decay", lambda: set())(),
    )
    for g in groups:  # timm gives the top block the head's rate; BEiT's rule gives it one decay step less
        g["lr_scale"] = g.get("lr_scale", 1.0) * layer_decay
    seen = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in backbone.parameters() if id(p) not in seen and p.requires_grad]  # e.g. mask token
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0, "lr_scale": min(g.get("lr_scale", 1.0) for g in groups)})
    groups.append({"params": list(head.parameters()), "weight_decay": weight_decay, "lr_scale": 1.0})
    return groups


def finetune(
    backbone: Backbone,
    train: ImageSource,
    test: ImageSource,
    mean,
    std,
    img_size: int | None = None,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    layer_decay: float = 0.75,
    weight_decay: float = 0.05,
    warmup_epochs: float = 3.0,
    crop_scale: tuple[float, float] = (0.35, 1.0),
    label_fraction: float = 1.0,
    precision: str = "auto",
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    num_workers: int = 0,
) -> dict:
    """Fine-tune ``backbone`` (in place) plus a new linear head on ``train`` and return test
    ``top1``/``top5`` (%), the number of labelled images used and the per-epoch training loss."""
    if not 0 < label_fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {label_fraction}")
    device = torch.device(device)
    torch.manual_seed(seed)
    labels = torch.as_tensor(train.labels)
    keep = torch.arange(len(labels))
    if label_fraction < 1:
        keep = torch.from_numpy(balanced_subset(np.asarray(labels), label_fraction, seed))
        labels = labels[keep]
    size = img_size or train.img_size
    batch_size = min(batch_size, len(labels))  # a small label fraction: one batch of them all
    head = nn.Linear(backbone.embed_dim, train.num_classes).to(device)
    nn.init.trunc_normal_(head.weight, std=2e-5)
    nn.init.zeros_(head.bias)
    backbone.to(device).train()
    groups = layer_decay_groups(backbone, head, weight_decay, layer_decay)
    base = lr * batch_size / 256
    opt = torch.optim.AdamW(groups, lr=base, fused=device.type == "cuda")
    steps_per_epoch = max(1, len(labels) // batch_size)
    total, warm = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    scales = cosine_schedule(1.0, 0.0, total, warm, warmup_from_first=True)  # x base lr per step
    crops = CropRecipe(train.num_channels, mean, std, size, size, global_scale=crop_scale, color_jitter_p=0.0)
    aug = BatchMultiCrop(crops.replace(grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=0.0))
    dtype = autocast_dtype(precision, device)
    g = torch.Generator().manual_seed(seed)

    def batches(epoch: int):
        order = keep[torch.randperm(len(labels), generator=g)]
        key = seed * 1_000_003 + epoch * steps_per_epoch
        yield from supervised_batches(train, order, batch_size, aug, key, device, num_workers)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return F.cross_entropy(head(backbone(x)).float(), y)

    for grp in opt.param_groups:
        grp["base_lr"] = base * grp.get("lr_scale", 1.0)
    losses = train_steps(loss_of, opt, epochs, batches, steps_per_epoch, scales, desc="fine-tune", progress=progress)
    backbone.eval()
    acc = TopK()
    with torch.no_grad():
        for x, y in _test_batches(test, size, num_workers):
            x = normalize_batch(x.to(device), mean, std, size)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                acc.update(head(backbone(x)).float(), y.to(device))
    return {
        **acc.result(),
        "train_images": len(labels),
        "label_fraction": label_fraction,
        "epochs": epochs,
        "epoch_loss": losses,
    }


def _test_batches(test, size: int, num_workers: int, batch_size: int = 256):
    """uint8 test batches and labels (:func:`~sslkd.data.views.eval_batches`); images that cannot
    be decoded are dropped, with a warning."""
    skipped = []
    for x, y, errors in eval_batches(test, size, batch_size=batch_size, workers=num_workers):
        ok = torch.tensor([not e for e in errors], dtype=torch.bool)
        skipped += [e for e in errors if e]
        if ok.any():
            yield x[ok], y[ok]
    if skipped:
        warnings.warn(
            f"fine-tuning: {len(skipped)} test file(s) could not be decoded, first: {skipped[0]}", stacklevel=2
        )


@dataclass
class FinetuneOptions:
    epochs: Positive = field(default=30, metadata={"help": "fine-tuning epochs"})
    lr: PositiveFloat = field(default=1e-3, metadata={"help": "base rate for batch 256 (scaled with the batch)"})
    layer_decay: Fraction = field(default=0.75, metadata={"help": "layer-wise learning-rate decay"})
    weight_decay: NonNegativeFloat = field(default=0.05, metadata={"help": "AdamW weight decay"})
    warmup_epochs: NonNegativeFloat = field(default=3.0, metadata={"help": "linear warm-up epochs"})
    label_fraction: Fraction = field(default=1.0, metadata={"help": "class-balanced share of the labels (0.01, 0.1)"})
    precision: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata={"help": "autocast precision"})


@register
class FinetuneProtocol(Protocol):
    name = "finetune"
    help = "full fine-tuning (AdamW, layer-wise lr decay, warm-up + cosine)"
    title = "Fine-tune"
    Options = FinetuneOptions
    frozen = False

    def run(self, backbone: torch.nn.Module, ctx: Context, options: FinetuneOptions) -> dict:
        if not isinstance(backbone, Backbone):
            raise ValueError("fine-tuning needs an sslkd backbone: pass a run, a checkpoint or build_backbone(...)")
        return finetune(
            backbone, ctx.train, ctx.test, ctx.mean, ctx.std, ctx.size, options.epochs,
            min(ctx.batch_size, len(ctx.train)), options.lr, options.layer_decay, options.weight_decay,
            options.warmup_epochs, label_fraction=options.label_fraction, precision=options.precision,
            device=ctx.device, seed=ctx.seed, progress=ctx.progress, num_workers=ctx.num_workers,
        )  # fmt: skip

    def describe(self, result: dict, options: FinetuneOptions) -> list[str]:
        share = f"{100 * options.label_fraction:g}% of the labels"
        return [f"fine-tuning {options.epochs} epochs on {result['train_images']} labelled images ({share})"]

    def result_file(self, options: FinetuneOptions) -> str | None:
        return "finetune.json" if options.label_fraction == 1 else f"finetune_{options.label_fraction:g}.json"
