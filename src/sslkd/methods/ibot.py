"""iBOT (Zhou et al., 2022) and its masked relational distillation variant.

iBOT: a ViT student sees the two global crops with block-wise masked patches (replaced by a
learned mask token) plus unmasked local crops; its EMA teacher sees the global crops unmasked.
``L = lambda1 * L_cls + lambda2 * L_patch``: DINO's multi-crop loss on the CLS outputs and the
cross-entropy between teacher and student patch outputs at masked positions, each with its own
centre and teacher-temperature warmup.

Masked relational distillation (``distill.mode`` = ``rkd-d``, ``rkd-a`` or ``rkd-da``) replaces
(``distill.combine: replace``) or complements (``add``, weighted by ``distill.weight``) those
instance-to-instance terms with RKD on structures:

- CLS level: relations over the images of the batch (of all processes when distributed: a
  gradient-aware all-gather, see :mod:`sslkd.distributed`), for each (teacher global view,
  different student view) pair, as DINO pairs views;
- patch level: relations over the patch tokens of each image, teacher unmasked view against
  the student's masked view of the same crop (masked image modelling on structures): only the
  views the student saw masked form structures (``distill.patch_images: masked``; ``all`` also
  relates the ~half of the views iBOT leaves unmasked).

``distill.features`` chooses what enters the relations: ``head`` (the projection head's
outputs, as in the paper) or ``bottleneck`` (the head's L2-normalised bottleneck).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

import torch
from torch import nn

from sslkd.data.masking import MaskGenerator
from sslkd.distributed import gather_batch
from sslkd.errors import ConfigError
from sslkd.losses import DINOLoss, IBOTPatchLoss, RKDAngleLoss, RKDDistanceLoss
from sslkd.methods.base import Method, MethodContext, StepInfo, cached_gradient_term, ema_teacher, ema_update
from sslkd.methods.collapse import collapse_metrics
from sslkd.methods.dino import DINOConfig
from sslkd.methods.registry import register
from sslkd.models import IBOTHead, ViTBackbone
from sslkd.schedules import warmup_temp
from sslkd.schema import Fraction, NonNegativeFloat, Positive, PositiveFloat, Probability, Range

MaskShare = Annotated[float, Range(ge=0, lt=1)]


@dataclass
class DistillConfig:
    mode: Literal["kd", "rkd-d", "rkd-a", "rkd-da"] = "kd"  # kd | rkd-d | rkd-a | rkd-da
    combine: Literal["replace", "add"] = "replace"  # replace: RKD instead of KD; add: KD + weight * RKD
    weight: NonNegativeFloat = 1.0  # RKD's weight under combine: add
    levels: Literal["cls", "patch", "both"] = "both"  # cls | patch | both: where RKD applies
    loss: Literal["ce", "huber"] = "ce"  # ce (the paper's) | huber (RKD's)
    delta: PositiveFloat = 1.0  # Huber threshold
    student_temp: PositiveFloat | None = None  # relational CE, student side; None: method.student_temp
    # relational CE, teacher side; None: the method's teacher temperature at each step, with its warmup
    # (CLS relations: teacher_temp, patch relations: teacher_patch_temp), as every other iBOT value
    teacher_temp: PositiveFloat | None = None
    # RKD-D with ce: near (softmax of -psi_D / tau: each row ranks the nearest neighbours highest, a
    # similarity) | far (+psi_D / tau, the farthest highest: sslkd before 2026-12-07)
    distance_rank: Literal["near", "far"] = "near"
    # CLS level: cross (teacher view v against the student's other views, as DINO pairs them) | all
    # (also the same view: the teacher's structure of crop v against the student's masked crop v)
    cls_pairs: Literal["cross", "all"] = "cross"
    features: Literal["head", "bottleneck"] = "head"  # head | bottleneck
    # patch level: structures of the images the student saw masked (the seed's masked image modelling
    # on structures) | all images (unmasked ones too: sslkd's behaviour before 2026-11-29)
    patch_images: Literal["masked", "all"] = "masked"
    # patch level, inside each image: all (every token's relations: measured better than masked at
    # Table 1's CPU budget, docs/methods/ibot.md) | masked (the relations of the masked tokens to
    # every token, the visible-visible pairs left out; with patch_images: all, an unmasked image adds 0)
    patch_tokens: Literal["masked", "all"] = "all"
    angle_chunk: Positive = 32  # RKD-A: anchors per chunk (memory)


@dataclass
class IBOTConfig(DINOConfig):
    """DINO's keys (CLS level) plus iBOT's patch-level, masking and distillation keys."""

    name: str = "ibot"  # the method (sslkd info lists them)
    out_dim: Positive = 8192  # CLS prototypes
    patch_out_dim: Positive | None = None  # None: out_dim
    shared_head: bool = True  # False: the student's patch tokens get their own last layer
    # iBOT's shared_head_teacher: with shared_head False, the teacher still projects its patch tokens
    # with its CLS last layer (the EMA of the student's); False: with its own (the EMA of the student's
    # patch last layer)
    shared_head_teacher: bool = True  # see above: the teacher's patch tokens use its CLS last layer
    teacher_patch_temp: PositiveFloat = 0.07  # patch-level teacher temperature after the warmup
    warmup_teacher_patch_temp: PositiveFloat = 0.04  # ... at the start
    center_momentum2: Probability = 0.9  # EMA momentum of the patch centre
    lambda1: NonNegativeFloat = 1.0  # weight of the CLS term
    lambda2: NonNegativeFloat = 1.0  # weight of the patch term
    mask_mode: Literal["block", "random"] = "block"  # block | random
    mask_ratio: tuple[MaskShare, MaskShare] = (0.1, 0.5)  # share of masked patches, per image in [low, high]
    mask_prob: Probability = 0.5  # share of the images that are masked
    mask_min_aspect: Fraction = 0.3  # block masks: smallest aspect ratio
    # the patch centre's statistic: all (iBOT: every patch token of the teacher) | masked (lightly's
    # IBOTPatchLoss: the masked positions only; the teacher's head then skips the unmasked patches)
    patch_center: Literal["all", "masked"] = "all"
    # the masked-patch loss's average over the images of a view: batch (all of them, unmasked ones
    # adding 0: iBOT's code) | masked (those with a masked patch: sslkd before 2026-12-07, ~2x the
    # weight at mask_prob 0.5)
    patch_norm: Literal["batch", "masked"] = "batch"
    distill: DistillConfig = field(default_factory=DistillConfig)
    # what a run stored before 2026-12-07 did (sslkd.config.stored_config)
    legacy_defaults: ClassVar[dict] = {
        "patch_norm": "masked",
        "distill": {"distance_rank": "far", "teacher_temp": 0.04, "student_temp": 0.1},
    }

    def validate(self) -> None:
        if not self.shared_head and self.shared_head_teacher and self.patch_out_dim not in (None, self.out_dim):
            raise ConfigError(
                f"method.shared_head_teacher: the teacher's CLS last layer has out_dim={self.out_dim} "
                f"outputs, patch_out_dim={self.patch_out_dim}; set them equal or shared_head_teacher=false"
            )
        lo, hi = self.mask_ratio
        if lo > hi:
            raise ConfigError(f"method.mask_ratio: need low <= high, got {self.mask_ratio}")


class IBOTEncoder(nn.Module):
    def __init__(self, backbone: ViTBackbone, head: IBOTHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        patches: bool = True,
        keep: torch.Tensor | None = None,
        full: bool = False,
    ) -> dict:
        """``keep [B, N]`` (bool): patch outputs only at those positions, as rows ``[M, K]`` in
        ``keep.nonzero()`` order (the masked-patch loss needs no others); ``full``: the MLP still
        sees every token and ``patch_mean`` is the mean patch output over all of them (the iBOT
        centre's statistic; exact, as the last layer is linear). Only for heads without BatchNorm,
        whose per-token outputs do not depend on which tokens share the batch."""
        cls, tokens = self.backbone.forward_features(x, mask)
        out = {"feat": cls}
        if not patches:
            z = self.head.bottleneck(cls)
            out.update(cls_z=z, cls_out=self.head.last_layer(z))
        elif keep is None:
            z = self.head.bottleneck(torch.cat([cls[:, None], tokens], 1))
            out.update(
                cls_z=z[:, 0],
                patch_z=z[:, 1:],
                cls_out=self.head.last_layer(z[:, 0]),
                patch_out=self.head.project_patches(z[:, 1:]),
            )
        elif full:
            z = self.head.bottleneck(torch.cat([cls[:, None], tokens], 1))
            mean = z[:, 1:].flatten(0, 1).float().mean(0, keepdim=True)
            out.update(
                cls_z=z[:, 0],
                cls_out=self.head.last_layer(z[:, 0]),
                patch_out=self.head.project_patches(z[:, 1:][keep]),
                patch_mean=self.head.project_patches(mean.to(z.dtype))[0],
            )
        else:
            b = cls.shape[0]
            z = self.head.bottleneck(torch.cat([cls, tokens[keep]]))
            out.update(cls_z=z[:b], cls_out=self.head.last_layer(z[:b]), patch_out=self.head.project_patches(z[b:]))
        return out


@register("ibot")
class IBOT(Method):
    config_class = IBOTConfig
    needs_vit = "masks patches"
    LABELS = {"kd": "iBOT & KD", "rkd-d": "iBOT & RKD-D", "rkd-a": "iBOT & RKD-A", "rkd-da": "iBOT & RKD-DA"}

    @classmethod
    def row_label(cls, method_cfg) -> str:
        """Its distillation mode, as the masked-relational paper's Table 1 names its rows."""
        return cls.LABELS[method_cfg.distill.mode]

    def __init__(self, ctx: MethodContext, in_chans: int, img_size: int, eval_only: bool = False, **kwargs) -> None:
        super().__init__(ctx, in_chans, img_size, eval_only, **kwargs)
        m = ctx.method
        backbone = self.build_backbone()
        head = IBOTHead(
            backbone.embed_dim,
            m.out_dim,
            m.patch_out_dim,
            m.shared_head,
            hidden_dim=m.hidden_dim,
            bottleneck_dim=m.bottleneck_dim,
            use_bn=m.use_bn_in_head,
            norm_last_layer=m.norm_last_layer,
        )
        self.student = IBOTEncoder(backbone, head)
        self.teacher = ema_teacher(self.student)
        self.teacher.head.patches_use_cls_layer = not m.shared_head and m.shared_head_teacher
        self.cls_loss = DINOLoss(m.out_dim, m.student_temp, m.center_momentum)
        self.patch_loss = IBOTPatchLoss(m.patch_out_dim or m.out_dim, m.student_temp, m.center_momentum2)
        self.masker = MaskGenerator(tuple(m.mask_ratio), m.mask_prob, m.mask_mode, m.mask_min_aspect)
        self._mask_cache: tuple | None = None
        d = m.distill
        student_temp = m.student_temp if d.student_temp is None else d.student_temp
        kw = dict(loss=d.loss, delta=d.delta, student_temp=student_temp, teacher_temp=d.teacher_temp or m.teacher_temp)
        self.rkd = nn.ModuleList()
        if d.mode in ("rkd-d", "rkd-da"):
            self.rkd.append(RKDDistanceLoss(ce_rank=d.distance_rank, **kw))
        if d.mode in ("rkd-a", "rkd-da"):
            self.rkd.append(RKDAngleLoss(chunk_size=d.angle_chunk, **kw))

    def masks(
        self, n_views: int, h: int, w: int, info: StepInfo, b: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masks [n_views, b, h, w] of this micro-batch's images, number of images with a masked
        patch per view in the whole step's batch [n_views])``. The masks of the global batch are a
        pure function of (seed, step, device type), drawn on ``device``, cut by global position: runs
        resume exactly, and a batch split over processes or micro-batches gets the masks it would get
        whole."""
        key = (info.step, n_views, h, w, info.shards * b)
        if self._mask_cache is None or self._mask_cache[0] != key:  # once per step, not per micro-batch
            g = torch.Generator(device).manual_seed((self.ctx.seed * 1_000_003 + info.step) * 64)
            full = self.masker(n_views * info.shards * b, h, w, g).reshape(n_views, info.shards * b, h, w)
            self._mask_cache = (key, full, full.flatten(2).any(-1).sum(-1).float())
        _, full, has = self._mask_cache
        return full[:, info.global_positions(b)], has

    def _masked_mean(self, patch_out: torch.Tensor, keep: torch.Tensor | None, masks: torch.Tensor) -> torch.Tensor:
        """``patch_center: masked``: the teacher's mean output over this shard's masked positions
        (the centre unchanged when it has none), from rows ``[M, K]`` or dense ``[2B, N, K]``."""
        rows = patch_out if keep is not None else patch_out[masks.flatten(1)]
        return rows.float().mean(0) if len(rows) else self.patch_loss.center[0]

    def relational(
        self, s: torch.Tensor, t: torch.Tensor, temp: float, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The RKD terms' sum; ``temp``: the teacher temperature of this level and step, unless
        ``distill.teacher_temp`` fixes it."""
        temp = self.ctx.method.distill.teacher_temp or temp
        return sum(fn(s, t, temp, rows) for fn in self.rkd)

    def _rkd_levels(self) -> tuple[bool, bool]:
        d = self.ctx.method.distill
        return d.mode != "kd" and d.levels in ("cls", "both"), d.mode != "kd" and d.levels in ("patch", "both")

    def _encode(self, views: list[torch.Tensor], info: StepInfo) -> dict:
        """Masks, teacher and student outputs of one (micro-)batch; ``*_cls_out`` by view ``[V, b, K]``."""
        m = self.ctx.method
        n_global, batch = 2, views[0].shape[0]
        p = self.student.backbone.patch_size
        h, w = views[0].shape[-2] // p, views[0].shape[-1] // p
        vmasks, has_masked = self.masks(n_global, h, w, info, batch, views[0].device)
        masks = vmasks.flatten(0, 1)
        # without patch-level RKD only the masked positions' patch outputs enter a loss: the heads
        # project just those (exact without BatchNorm in the head; ~40% of the FLOPs at 32 px)
        keep = masks.flatten(1) if not self._rkd_levels()[1] and not m.use_bn_in_head else None
        with torch.no_grad():
            t = self.teacher(torch.cat(views[:n_global]), keep=keep, full=m.patch_center == "all")
        s = self.student(torch.cat(views[:n_global]), mask=masks, keep=keep)
        s_cls_out, s_cls_z, s_feat = [s["cls_out"]], [s["cls_z"]], [s["feat"]]
        if len(views) > n_global:  # local crops: same size, one forward, CLS only
            loc = self.student(torch.cat(views[n_global:]), patches=False)
            s_cls_out.append(loc["cls_out"])
            s_cls_z.append(loc["cls_z"])
            s_feat.append(loc["feat"])

        def by_view(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(-1, batch, *x.shape[1:])

        return dict(
            t=t,
            s=s,
            batch=batch,
            hw=h * w,
            masks=masks,
            has_masked=has_masked,
            keep=keep,
            by_view=by_view,
            s_cls_out=by_view(torch.cat(s_cls_out)),
            t_cls_out=by_view(t["cls_out"]),
            s_cls_z=by_view(torch.cat(s_cls_z)),
            s_feat=by_view(torch.cat(s_feat)),
        )

    def _cls_relation_inputs(self, enc: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """What enters the CLS-level relations: student ``[V, b, K]``, teacher ``[2, b, K]``."""
        if self.ctx.method.distill.features == "head":
            return enc["s_cls_out"], enc["t_cls_out"]
        return enc["s_cls_z"], enc["by_view"](enc["t"]["cls_z"])

    def _rkd_cls(self, s_rel: torch.Tensor, t_rel: torch.Tensor, temp: float) -> torch.Tensor:
        """CLS-level RKD over the global batch (every process's images, gradient-aware gather), for
        each (teacher global view, different student view) pair, as DINO pairs views
        (``distill.cls_pairs: all`` adds the same-view pairs)."""
        s_rel = gather_batch(s_rel.transpose(0, 1)).transpose(0, 1)
        t_rel = gather_batch(t_rel.transpose(0, 1), differentiable=False).transpose(0, 1)
        same = self.ctx.method.distill.cls_pairs == "all"
        pairs = [(tv, sv) for tv in range(len(t_rel)) for sv in range(len(s_rel)) if same or sv != tv]
        return sum(self.relational(s_rel[sv], t_rel[tv], temp) for tv, sv in pairs) / len(pairs)

    def _temps(self, epoch: float) -> tuple[float, float]:
        """The teacher temperatures of this step: (CLS, patch), each after its warmup."""
        m = self.ctx.method
        return (
            warmup_temp(m.warmup_teacher_temp, m.teacher_temp, m.warmup_teacher_temp_epochs, epoch),
            warmup_temp(m.warmup_teacher_patch_temp, m.teacher_patch_temp, m.warmup_teacher_temp_epochs, epoch),
        )

    def has_batch_losses(self) -> bool:
        return self._rkd_levels()[0]

    def batch_features(self, views, info: StepInfo) -> dict[str, torch.Tensor] | None:
        if not self._rkd_levels()[0]:
            return None
        s_rel, t_rel = self._cls_relation_inputs(self._encode(views, info))
        return {"student": s_rel.transpose(0, 1), "teacher": t_rel.transpose(0, 1)}

    def batch_losses(self, features: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        s_rel, t_rel = features["student"].transpose(0, 1), features["teacher"].transpose(0, 1)
        return {"rkd_cls": self._rkd_cls(s_rel, t_rel, self._temps(info.epoch)[0])}

    def forward(self, views, info: StepInfo, cached: dict | None = None):
        m, d = self.ctx.method, self.ctx.method.distill
        rkd_cls, rkd_patch = self._rkd_levels()
        enc = self._encode(views, info)
        t, s, by_view, keep, masks = enc["t"], enc["s"], enc["by_view"], enc["keep"], enc["masks"]
        s_cls_out, t_cls_out = enc["s_cls_out"], enc["t_cls_out"]
        s_patch, t_patch = (
            (s["patch_out"], t["patch_out"]) if keep is not None else (by_view(s["patch_out"]), by_view(t["patch_out"]))
        )
        vmask = masks.reshape(2, enc["batch"], enc["hw"])
        temp, temp2 = self._temps(info.epoch)
        losses: dict[str, torch.Tensor] = {}
        total = s_cls_out.new_zeros((), dtype=torch.float32)
        if not rkd_cls or d.combine == "add":
            losses["cls"] = self.cls_loss(s_cls_out, t_cls_out, temp)
            total = total + m.lambda1 * losses["cls"]
        if not rkd_patch or d.combine == "add":
            center_stat = (
                t.get("patch_mean") if m.patch_center == "all" else self._masked_mean(t["patch_out"], keep, masks)
            )
            # iBOT's code: the mean over every image of a view; masked: over those with a masked patch
            den = enc["has_masked"] / info.shards if m.patch_norm == "masked" else torch.full((2,), enc["batch"])
            losses["patch"] = self.patch_loss(s_patch, t_patch, vmask, temp2, den.to(vmask.device), center_stat)
            total = total + m.lambda2 * losses["patch"]
        rkd_weight = 1.0 if d.combine == "replace" else d.weight
        if rkd_cls:
            s_rel, t_rel = self._cls_relation_inputs(enc)
            if cached is None:
                losses["rkd_cls"] = self._rkd_cls(s_rel, t_rel, temp)
            else:  # the whole batch's loss value and gradient (gradient caching)
                losses["rkd_cls"] = cached["losses"]["rkd_cls"] + cached_gradient_term(
                    s_rel.transpose(0, 1), cached, "student", info.accum_steps
                )
            total = total + rkd_weight * m.lambda1 * losses["rkd_cls"]
        if rkd_patch:
            head = d.features == "head"
            s_rel = s_patch if head else by_view(s["patch_z"])
            t_rel = t_patch if head else by_view(t["patch_z"])
            # one batched call over the groups of patch tokens (a per-image loop was ~6x slower on a GPU)
            s_rel, t_rel = s_rel.flatten(0, 1), t_rel.flatten(0, 1)
            rows = masks.flatten(1) if d.patch_tokens == "masked" else None  # [2b, N]: masked tokens
            if d.patch_images == "all":
                losses["rkd_patch"] = self.relational(s_rel, t_rel, temp2, rows)
            else:  # masked views only; sum / (masked views per shard of the step): exact when split
                sel = vmask.any(-1).flatten()
                n = int(sel.sum())
                per_shard = (enc["has_masked"].sum() / info.shards).clamp_min(1).to(s_rel.device)
                rows = None if rows is None else rows[sel]
                losses["rkd_patch"] = (
                    self.relational(s_rel[sel], t_rel[sel], temp2, rows) * n / per_shard if n else s_rel.sum() * 0.0
                )
            total = total + rkd_weight * m.lambda2 * losses["rkd_patch"]
        metrics = collapse_metrics(
            self.cls_loss.teacher_probs(t_cls_out, temp), enc["s_feat"][:2], s_cls_out, t_cls_out
        )
        metrics["mask_ratio"] = masks.float().mean()
        metrics["teacher_temp"] = torch.tensor(temp)
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}, metrics

    def on_optimizer_step(self, momentum: float) -> None:
        ema_update(self.teacher, self.student, momentum)
        self.cls_loss.update_center()
        self.patch_loss.update_center()
