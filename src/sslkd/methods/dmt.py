"""DMT: several frozen self-supervised ViT teachers fused into one student ViT.

Teachers (``method.teachers``: sslkd runs, other projects' checkpoints or ``timm:`` names, see
:func:`sslkd.teachers.load_teachers`, passed in as ``teachers``) keep their final LayerNorm and lose any decoder; they
must share one width ``D``. The student ViT (width ``D'``) is followed by a light adapter
``Linear(D', D)`` on every token. Teachers see the crop plain, the student sees the same crop
colour-jittered (``aug.paired``, set automatically). ``L = TFD + SFD`` (no weights) over the sum
of the teachers' tokens; ``loss: mse`` and ``tfd``/``sfd`` switches are the paper's ablations,
and any subset of teachers is a shorter ``teachers`` list. A teacher whose token grid differs
from the student's is an error unless ``resample: true``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from sslkd.errors import ConfigError, TeacherError
from sslkd.losses.dmt import SpatialFusionLoss, TokenFusionLoss
from sslkd.methods.base import Method, MethodContext, StepInfo
from sslkd.methods.registry import register
from sslkd.models import Backbone
from sslkd.models.teacher import FrozenTeacher, TeacherConfig


@dataclass
class DMTConfig(TeacherConfig):
    name: str = "dmt"  # the method (sslkd info lists them)
    teachers: list[str] = field(default_factory=list)  # sslkd runs, weight files or timm:<model> (ViTs, one width)
    loss: Literal["kl", "mse"] = "kl"  # kl (the paper's) | mse
    tfd: bool = True  # token fusion distillation term
    sfd: bool = True  # spatial fusion distillation term
    resample: bool = False  # resample a teacher's token grid that differs from the student's

    def teacher_sources(self) -> list[str]:
        return list(self.teachers)

    def validate(self) -> None:
        if not self.teachers:
            raise ConfigError("method.teachers: name at least one teacher (run, file or timm:<model>)")
        if not (self.tfd or self.sfd):
            raise ConfigError("method.tfd / method.sfd: at least one term must be on")


@register("dmt")
class DMT(Method):
    config_class = DMTConfig
    paired_views = True  # the engine's augmentation gives [plain crop, colour-jittered crop]
    needs_teachers = True
    needs_vit = "distils token sequences into a ViT student"
    local_crops = False

    def __init__(
        self,
        ctx: MethodContext,
        in_chans: int,
        img_size: int,
        eval_only: bool = False,
        teachers: list[FrozenTeacher] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(ctx, in_chans, img_size, eval_only, **kwargs)
        m = ctx.method
        self.student = self.build_backbone()
        if eval_only:
            return
        if not teachers:
            raise TeacherError(
                "DMT needs its frozen teachers: pass teachers=[...] "
                "(sslkd.teachers.load_teachers(cfg.method, in_chans))"
            )
        for source, t in zip(m.teachers, teachers):
            if not t.backbone.is_vit:
                raise TeacherError(f"teacher {source} is not a ViT: DMT fuses token sequences")
        widths = {t.backbone.embed_dim for t in teachers}
        if len(widths) != 1:
            raise TeacherError(f"DMT's teachers must share one width, got {sorted(widths)}")
        self.teachers = nn.ModuleList(teachers)
        self.adapter = nn.Linear(self.student.embed_dim, widths.pop())
        self.tfd = TokenFusionLoss(m.loss, m.resample)
        self.sfd = SpatialFusionLoss(m.loss, m.resample)

    @classmethod
    def teacher_overrides(cls, sources: list[str]) -> dict:
        if not sources:
            raise ConfigError("--method dmt distils frozen teachers: name them with --teacher A --teacher B ...")
        return {"teachers": list(sources)}

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and not n.startswith("teachers.")]

    def forward(self, views: list[torch.Tensor], info: StepInfo):
        plain, jittered = views[0], views[1]
        targets = [t.tokens(plain) for t in self.teachers]
        cls, tokens = self.student.forward_features(jittered)
        z = self.adapter(torch.cat([cls[:, None], tokens], 1))
        terms = {}
        if self.ctx.method.tfd:
            terms["tfd"] = self.tfd(z, targets)
        if self.ctx.method.sfd:
            terms["sfd"] = self.sfd(z, targets)
        with torch.no_grad():
            fused = torch.stack([t.float() for t in targets]).sum(0)
            cos = nn.functional.cosine_similarity(z.float(), fused, dim=-1).mean()
            std = nn.functional.normalize(cls.float(), dim=-1).std(0).mean()
        return {"loss": sum(terms.values()), **{k: v.detach() for k, v in terms.items()}}, {
            "cosine_to_fused": cos,
            "feature_std": std,
        }

    def load_for_eval(self, state: dict[str, torch.Tensor]) -> None:
        self.student.load_state_dict({k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")})

    def eval_backbone(self, which: str = "teacher", model: int = 1) -> Backbone:
        """The student ViT (the teachers are the frozen source models)."""
        self.check_model(model)
        return self.student
