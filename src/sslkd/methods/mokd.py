"""MOKD (Song et al., CVPR 2023): two different models learn online from each other.

Each model ``i`` (``model`` is model 1, ``method.model2`` model 2; any two backbone families)
is a student with an EMA teacher, an MLP-Head (DINO's head) and a T-Head
(:class:`~sslkd.models.heads.THead`, on the global crops). With ``j`` the other model and DINO's
centred, sharpened cross-entropy ``H(target, student)`` averaged over pairs of different views:

- ``L_sm_i``: MLP-Head against its own EMA teacher (DINO, multi-crop);
- ``L_st_i``: T-Head against its own EMA T-Head (global views);
- ``L_cm_i``: MLP-Head against model ``j``'s EMA MLP-Head (``j``'s centre), on the two global
  views only (Eq. 5, Algorithm 1; the local crops enter ``L_sm`` alone);
- ``L_ct_i``: T-Head on view ``v`` against model ``j``'s EMA T-Head run on ``j``'s tokens of the
  other view with this model's pooled view-``v`` feature as an extra search token
  (cross-attention feature search, Eq. 6-7);
- ``L_i = L_sm_i + L_st_i + lambda_i (L_cm_i + L_ct_i)``, each term switchable (Table 7).

A ViT's MLP-Head reads its patch tokens global-average-pooled (Sec. 3.2: "the representations
are globally-average-pooled and fed into the corresponding MLP-Head"), as a CNN's pooled map;
``method.vit_pool: cls`` reads the CLS token instead. The evaluated feature is the same pooled one.

Targets are stop-gradient, as in DINO; so the search projection (the 1x1 convolution that
brings the pooled feature to the other T-Head's width) keeps its initial weights: it lives in
the EMA T-Head, whose online copy never sees a search token. This is the paper's own Algorithm 1:
the searches run only in the momentum T-Heads (``t1_(Za2, Zb1_)``), which change only by
``n_.params = l * n.params + (1 - l) * n.params``, and the online T-Heads are called without a
search token; the text says as much ("The T-Head of the momentum model cannot be updated if
there is only the feature search loss"). The projection is a fixed random linear map of the
pooled feature (full rank: no information lost); the trained T-Head blocks' query and key
projections, EMA-copied into the searching head, learn to read it. ``L_1`` does not depend on model
2's student parameters nor ``L_2`` on model 1's, so back-propagating ``L_1 + L_2`` gives each
model its own gradient. ``lambda1 = 0.1, lambda2 = 1`` by default: Table 8's best for R50
(model 1) + ViT-S (model 2), the smaller weight for the stronger model; the paper's text says
the reverse (1 for the larger model); set ``method.lambda1``/``lambda2`` to follow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from sslkd.errors import ConfigError
from sslkd.losses import DINOLoss
from sslkd.methods.base import Method, MethodContext, StepInfo, ema_teacher, ema_update
from sslkd.methods.collapse import collapse_metrics
from sslkd.methods.dino import DINOConfig
from sslkd.methods.registry import register
from sslkd.models import Backbone, DINOHead, ModelConfig, THead, is_vit
from sslkd.schedules import warmup_temp
from sslkd.schema import NonNegative, NonNegativeFloat, PositiveFloat


@dataclass
class MOKDConfig(DINOConfig):
    """DINO's head and temperature keys (shared by both models) plus MOKD's. ``model2`` is a
    ``model`` section; its ``init_seed`` None means model 1's initialisation seed + 1 (two twins
    must not start equal)."""

    name: str = "mokd"  # the method (sslkd info lists them)
    teacher_temp: PositiveFloat = 0.07  # tau' after its warmup (Suppl. A.1)
    warmup_teacher_temp: PositiveFloat = 0.04  # tau' at the start (Suppl. A.1)
    warmup_teacher_temp_epochs: NonNegativeFloat = 30  # the paper's 30 of 100 epochs; a first run: 30% of it
    # a ViT's feature for the MLP-Head and evaluation: mean (its patch tokens pooled, Sec. 3.2) | cls
    vit_pool: Literal["mean", "cls"] = "mean"
    model2: ModelConfig = field(  # the second model, as the model section
        default_factory=ModelConfig,
        metadata={"notes": {"init_seed": "None: model 1's init seed + 1 (twins must differ)"}},
    )
    lambda1: NonNegativeFloat = 0.1  # weight of model 1's cross terms
    lambda2: NonNegativeFloat = 1.0  # weight of model 2's cross terms
    self_mlp: bool = True  # L_sm
    self_thead: bool = True  # L_st
    cross_mlp: bool = True  # L_cm
    cross_thead: bool = True  # L_ct (cross-attention feature search)
    thead_width: NonNegative = 0  # 0: the ViT's width (the larger ViT's if both are ViTs), else 384
    thead_depth: NonNegative = 3  # T-Head transformer blocks
    optimizer1: Literal["auto", "sgd", "adamw"] = "auto"  # auto: SGD for CNNs, AdamW for ViTs (the paper) | sgd | adamw
    optimizer2: Literal["auto", "sgd", "adamw"] = "auto"  # the same for model 2
    sgd_lr: PositiveFloat = 0.1  # the paper's ResNet base lr (x batch/256), with train.base_lr's schedule shape
    sgd_weight_decay: NonNegativeFloat = 1.0e-4  # SGD's weight decay (constant)

    # a run stored before 2026-12-07 fed its ViT's CLS token to the MLP-Head (sslkd.config.stored_config)
    legacy_defaults: ClassVar[dict] = {"vit_pool": "cls"}

    def validate(self) -> None:
        self.model2.validate("method.model2.")
        if self.thead_depth < 1 and (self.self_thead or self.cross_thead):
            raise ConfigError("method.thead_depth: must be >= 1 when a T-Head term is on")


class MOKDNet(nn.Module):
    """One model: backbone, MLP-Head, T-Head."""

    def __init__(self, backbone: Backbone, mlp: DINOHead, thead: THead) -> None:
        super().__init__()
        self.backbone, self.head, self.thead = backbone, mlp, thead

    def forward(self, x: torch.Tensor, with_thead: bool = True) -> dict[str, torch.Tensor]:
        cls, tokens = self.backbone.forward_features(x)
        out = {"cls": cls, "m": self.head(cls), "tokens": tokens}
        if with_thead:
            out["t"] = self.thead(tokens)
        return out


@register("mokd")
class MOKD(Method):
    config_class = MOKDConfig
    num_models = 2

    def __init__(self, ctx: MethodContext, in_chans: int, img_size: int, eval_only: bool = False, **kwargs) -> None:
        super().__init__(ctx, in_chans, img_size, eval_only, **kwargs)
        m = ctx.method
        mc, m2 = ctx.model, m.model2
        seed1 = ctx.init_seed
        seeds = (seed1, seed1 + 1 if m2.init_seed is None else m2.init_seed)
        backbones, heads = [], []
        # each model initialised as a DINO run with that model.init_seed would be; two models of the
        # same architecture start apart (the paper's same-architecture pairs are independent networks)
        for seed, model_cfg in zip(seeds, (mc, m2)):
            torch.manual_seed(seed)
            bb = self.build_backbone(model_cfg)
            if bb.is_vit:
                bb.pool = m.vit_pool
            backbones.append(bb)
            heads.append(
                DINOHead(
                    bb.embed_dim,
                    m.out_dim,
                    m.hidden_dim,
                    m.bottleneck_dim,
                    use_bn=m.use_bn_in_head,
                    norm_last_layer=m.norm_last_layer,
                )
            )
        vit_widths = [bb.embed_dim for bb in backbones if bb.is_vit]
        width = m.thead_width or (max(vit_widths) if vit_widths else 384)
        with torch.no_grad():
            probe = torch.zeros(1, in_chans, img_size, img_size)
            n_tokens = [bb.eval().forward_features(probe)[1].shape[1] for bb in backbones]
            for bb in backbones:
                bb.train()
        torch.manual_seed(seed1 + 2)
        theads = [
            THead(bb.embed_dim, n, m.out_dim, width, m.thead_depth, search_dim=other.embed_dim)
            for bb, n, other in zip(backbones, n_tokens, backbones[::-1])
        ]
        self.student = nn.ModuleList(MOKDNet(b, h, t) for b, h, t in zip(backbones, heads, theads))
        self.teacher = nn.ModuleList(ema_teacher(s) for s in self.student)
        self.mlp_loss = nn.ModuleList(DINOLoss(m.out_dim, m.student_temp, m.center_momentum) for _ in range(2))
        self.thead_loss = nn.ModuleList(DINOLoss(m.out_dim, m.student_temp, m.center_momentum) for _ in range(2))

    @classmethod
    def first_run(cls, epochs: int, model: dict) -> dict:
        """Suppl. A.1's recipe for a run without a YAML file: a second model of the other family
        (the paper: ResNet-50 + ViT-S/16; here ResNet-18 beside a ViT, ViT-Tiny beside a CNN), the
        ViT's AdamW base lr 3e-4 (the CNN's SGD lr 0.1 is ``sgd_lr``), tau' warmed up over the first
        30% of the run, DINO's per-tensor clipping, and A.1's augmentations (crop, flip, blur, colour
        jitter: no grayscale, no solarize)."""
        other = "resnet18" if is_vit(model["backbone"]) else "vit_tiny"
        return {
            "train": {"base_lr": 3e-4, "clip_mode": "per_param"},
            "method": {
                "warmup_teacher_temp_epochs": 0.3 * epochs,
                "model2": {**{k: model[k] for k in ("patch_size", "small_stem") if k in model}, "backbone": other},
            },
            "aug": {"grayscale_p": 0.0, "solarize_p": 0.0},
        }

    @classmethod
    def backbones(cls, cfg) -> list[str]:
        return [cfg.model.backbone, cfg.method.model2.backbone]

    def optimizer_specs(self) -> list[dict]:
        """One optimiser per model: SGD (momentum 0.9, ``sgd_lr``, constant ``sgd_weight_decay``) for a
        CNN and AdamW (the engine's lr and weight-decay schedule) for a ViT, unless forced."""
        m = self.ctx.method
        specs = []
        for i, (student, choice) in enumerate(zip(self.student, (m.optimizer1, m.optimizer2))):
            kind = choice if choice != "auto" else ("adamw" if student.backbone.is_vit else "sgd")
            params = [(f"student.{i}.{n}", p) for n, p in student.named_parameters() if p.requires_grad]
            if kind == "sgd":
                specs.append({"params": params, "kind": "sgd", "lr": m.sgd_lr, "weight_decay": m.sgd_weight_decay})
            else:
                specs.append({"params": params, "kind": "adamw"})
        return specs

    def clip_groups(self) -> list[list[nn.Parameter]]:
        return [[p for p in s.parameters() if p.requires_grad] for s in self.student]

    def eval_backbone(self, which: str = "teacher", model: int = 1) -> Backbone:
        self.check_model(model)
        return (self.teacher if which == "teacher" else self.student)[model - 1].backbone

    def forward(self, views: list[torch.Tensor], info: StepInfo):
        per_model, losses, metrics = self.model_losses(views, info)
        return {"loss": per_model[0] + per_model[1], **losses}, metrics

    def model_losses(
        self, views: list[torch.Tensor], info: StepInfo
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``([L_1, L_2] with gradients, detached named terms, metrics)``."""
        m = self.ctx.method
        n_global = 2
        use_t = m.self_thead or m.cross_thead
        temp = warmup_temp(m.warmup_teacher_temp, m.teacher_temp, m.warmup_teacher_temp_epochs, info.epoch)
        stack = torch.stack
        t_out, s_out = [], []
        with torch.no_grad():
            for teacher in self.teacher:
                outs = [teacher(v, with_thead=use_t) for v in views[:n_global]]
                t_out.append({k: stack([o[k] for o in outs]) for k in outs[0]})
        for student in self.student:
            outs = [student(v, with_thead=use_t and i < n_global) for i, v in enumerate(views)]
            res = {"m": stack([o["m"] for o in outs]), "cls": stack([o["cls"] for o in outs[:n_global]])}
            if use_t:
                res["t"] = stack([o["t"] for o in outs[:n_global]])
                res["pooled"] = stack([o["tokens"].mean(1) for o in outs[:n_global]])
            s_out.append(res)
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        per_model = []
        lams = (m.lambda1, m.lambda2)
        for i, j in ((0, 1), (1, 0)):
            n = str(i + 1)
            # every teacher output feeds its own centre exactly once (cross terms do not record)
            sm = self.mlp_loss[i](s_out[i]["m"], t_out[i]["m"], temp)
            if m.self_mlp:
                losses["sm" + n] = sm
            if use_t:
                st = self.thead_loss[i](s_out[i]["t"], t_out[i]["t"], temp)
                if m.self_thead:
                    losses["st" + n] = st
            self_loss = sum(losses.get(k + n, 0) for k in ("sm", "st"))
            cross = 0
            if m.cross_mlp:  # the global views only (Eq. 5, Algorithm 1)
                losses["cm" + n] = self.mlp_loss[j](s_out[i]["m"][:n_global], t_out[j]["m"], temp, record=False)
                cross = cross + losses["cm" + n]
            if m.cross_thead:
                with torch.no_grad():  # model j's EMA T-Head on j's other view, searched by i's view v
                    target = stack(
                        [
                            self.teacher[j].thead(t_out[j]["tokens"][1 - v], s_out[i]["pooled"][v])
                            for v in range(n_global)
                        ]
                    )
                losses["ct" + n] = self._paired_ce(self.thead_loss[j], s_out[i]["t"], target, temp)
                cross = cross + losses["ct" + n]
            per_model.append(self_loss + lams[i] * cross + s_out[i]["m"].new_zeros((), dtype=torch.float32))
            probs = self.mlp_loss[i].teacher_probs(t_out[i]["m"], temp)
            for k, v in collapse_metrics(probs, s_out[i]["cls"], s_out[i]["m"], t_out[i]["m"]).items():
                metrics[f"{k}{n}"] = v
        metrics["teacher_temp"] = torch.tensor(temp)
        return per_model, {k: v.detach() for k, v in losses.items()}, metrics

    @staticmethod
    def _paired_ce(loss: DINOLoss, student: torch.Tensor, target: torch.Tensor, temp: float) -> torch.Tensor:
        """``mean_v H(target_v, student_v)`` with ``loss``'s centre: view ``v`` against its own target."""
        p_t = loss.teacher_probs(target, temp)
        log_p_s = torch.log_softmax(student.float() / loss.student_temp, dim=-1)
        return -(p_t * log_p_s).sum(-1).mean()

    def on_optimizer_step(self, momentum: float) -> None:
        for teacher, student in zip(self.teacher, self.student):
            ema_update(teacher, student, momentum)
        for loss in (*self.mlp_loss, *self.thead_loss):
            loss.update_center()
