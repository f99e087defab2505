"""MoCo v3 (Chen, Xie & He, ICCV 2021): a query encoder (backbone + projector + predictor) against a
momentum encoder (backbone + projector, EMA), symmetric InfoNCE between the two global views
(:class:`~sslkd.losses.mocov3.MoCoV3Loss`). ViTs and CNNs alike; the paper's MLPs (hidden 4096,
output 256, BatchNorm, the last BN without affine) with a 3-layer projector for ViTs and 2 for
CNNs, ``τ = 0.2``. The momentum follows ``train.momentum_teacher`` -> ``momentum_teacher_end``
(the paper: 0.99 -> 1, cosine). Local crops, if configured, are not used. Evaluation reads the
momentum encoder's backbone (``teacher``) or the query backbone (``student``).

The negatives are the keys of the whole batch, under gradient accumulation too: the InfoNCE
couples every image of the batch, so the engine caches its gradient (:mod:`sslkd.train.gradcache`)
instead of contrasting each micro-batch only with itself. BatchNorm statistics stay per
micro-batch (as per process without SyncBatchNorm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslkd.losses.mocov3 import MoCoV3Loss
from sslkd.methods.base import Method, MethodContext, StepInfo, cached_gradient_term, ema_teacher, ema_update
from sslkd.methods.registry import register
from sslkd.models import Encoder, moco_mlp
from sslkd.schema import NonNegative, Positive, PositiveFloat


@dataclass
class MoCoV3Config:
    name: str = "mocov3"  # the method (sslkd info lists them)
    hidden_dim: Positive = 4096  # projector / predictor MLP width
    out_dim: Positive = 256  # embedding width
    proj_layers: NonNegative = 0  # 0: the paper's (3 for ViTs, 2 for CNNs)
    temperature: PositiveFloat = 0.2  # InfoNCE temperature


@register("mocov3")
class MoCoV3(Method):
    config_class = MoCoV3Config
    local_crops = False

    def __init__(self, ctx: MethodContext, in_chans: int, img_size: int, eval_only: bool = False, **kwargs) -> None:
        super().__init__(ctx, in_chans, img_size, eval_only, **kwargs)
        m = ctx.method
        backbone = self.build_backbone()
        layers = m.proj_layers or (3 if backbone.is_vit else 2)
        self.student = Encoder(backbone, moco_mlp(backbone.embed_dim, m.hidden_dim, m.out_dim, layers))
        self.predictor = moco_mlp(m.out_dim, m.hidden_dim, m.out_dim, 2, last_bn=False)
        self.teacher = ema_teacher(self.student)
        self.loss_fn = MoCoV3Loss(m.temperature)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return super().trainable_parameters() + [(f"predictor.{n}", p) for n, p in self.predictor.named_parameters()]

    def encode(self, views) -> dict[str, torch.Tensor]:
        x1, x2 = views[0], views[1]
        f1, z1 = self.student(x1)
        _, z2 = self.student(x2)
        with torch.no_grad():
            _, k1 = self.teacher(x1)
            _, k2 = self.teacher(x2)
        return {"f1": f1, "q1": self.predictor(z1), "q2": self.predictor(z2), "k1": k1, "k2": k2}

    def has_batch_losses(self) -> bool:
        return True

    def batch_features(self, views, info: StepInfo) -> dict[str, torch.Tensor]:
        e = self.encode(views)
        return {k: e[k] for k in ("q1", "q2", "k1", "k2")}

    def batch_losses(self, features: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        return {"mocov3": self.loss_fn(features["q1"], features["q2"], features["k1"], features["k2"])}

    def forward(self, views, info: StepInfo, cached: dict | None = None):
        e = self.encode(views)
        q1, q2, k2 = e["q1"], e["q2"], e["k2"]
        if cached is None:
            loss = self.loss_fn(q1, q2, e["k1"], k2)
        else:  # the whole batch's InfoNCE value and gradient (gradient caching)
            loss = cached["losses"]["mocov3"] + sum(
                cached_gradient_term(q, cached, key, info.accum_steps) for key, q in (("q1", q1), ("q2", q2))
            )
        z = nn.functional.normalize(e["f1"].float(), dim=-1)
        with torch.no_grad():
            agree = (
                (nn.functional.normalize(q1.float(), dim=-1) @ nn.functional.normalize(k2.float(), dim=-1).T)
                .argmax(-1)
                .eq(torch.arange(len(q1), device=q1.device))
                .float()
                .mean()
            )
        return {"loss": loss, "mocov3": loss.detach()}, {"feature_std": z.std(0).mean().detach(), "agreement": agree}

    def on_optimizer_step(self, momentum: float) -> None:
        ema_update(self.teacher, self.student, momentum)
