"""DINO (Caron et al., 2021): a student matches its EMA teacher's centred, sharpened outputs
across multi-crop views."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslkd.losses import DINOLoss
from sslkd.methods.base import Method, MethodContext, StepInfo, ema_teacher, ema_update
from sslkd.methods.collapse import collapse_metrics
from sslkd.methods.registry import register
from sslkd.models import DINOHead, Encoder, forward_views
from sslkd.schedules import warmup_temp
from sslkd.schema import NonNegativeFloat, Positive, PositiveFloat, Probability


@dataclass
class DINOConfig:
    name: str = "dino"  # the method (sslkd info lists them)
    out_dim: Positive = 4096  # prototypes of the head's last layer
    hidden_dim: Positive = 2048  # head MLP width
    bottleneck_dim: Positive = 256  # head bottleneck (L2-normalised) width
    use_bn_in_head: bool = False  # BatchNorm in the head MLP
    norm_last_layer: bool = True  # weight-normalised last layer with its norm frozen at 1
    student_temp: PositiveFloat = 0.1  # student softmax temperature
    teacher_temp: PositiveFloat = 0.04  # teacher temperature after the warmup
    warmup_teacher_temp: PositiveFloat = 0.04  # teacher temperature at the start
    warmup_teacher_temp_epochs: NonNegativeFloat = 0  # below 1: a share of an epoch, for runs of one epoch or less
    center_momentum: Probability = 0.9  # EMA momentum of the teacher's centre


@register("dino")
class DINO(Method):
    config_class = DINOConfig

    def __init__(self, ctx: MethodContext, in_chans: int, img_size: int, eval_only: bool = False, **kwargs) -> None:
        super().__init__(ctx, in_chans, img_size, eval_only, **kwargs)
        m = ctx.method
        backbone = self.build_backbone()
        head = DINOHead(
            backbone.embed_dim,
            m.out_dim,
            m.hidden_dim,
            m.bottleneck_dim,
            use_bn=m.use_bn_in_head,
            norm_last_layer=m.norm_last_layer,
        )
        self.student = Encoder(backbone, head)
        self.teacher = ema_teacher(self.student)
        self.loss_fn = DINOLoss(m.out_dim, m.student_temp, m.center_momentum)

    def forward(self, views, info: StepInfo):
        n_global = 2
        with torch.no_grad():
            _, t_out = forward_views(self.teacher, views[:n_global])
        s_feats, s_out = forward_views(self.student, views)
        m = self.ctx.method
        temp = warmup_temp(m.warmup_teacher_temp, m.teacher_temp, m.warmup_teacher_temp_epochs, info.epoch)
        loss = self.loss_fn(s_out, t_out, temp)
        metrics = collapse_metrics(self.loss_fn.teacher_probs(t_out, temp), s_feats[:n_global], s_out, t_out)
        metrics["teacher_temp"] = torch.tensor(temp)
        return {"loss": loss, "dino": loss.detach()}, metrics

    def on_optimizer_step(self, momentum: float) -> None:
        ema_update(self.teacher, self.student, momentum)
        self.loss_fn.update_center()
