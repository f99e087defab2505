"""SEED (Fang et al., ICLR 2021): distil a frozen self-supervised teacher into a small student.

Teacher and student see the same crop (the first global view). The student's backbone feeds an
MLP head (Linear - BN - ReLU - Linear) to the teacher's embedding width; the loss is
:class:`~sslkd.losses.SEEDLoss` over a FIFO queue of L2-normalised teacher embeddings, into which
the batch (of every process) is enqueued after the loss. Ablations: ``loss: l2 | cosine`` (plain
regression to the teacher embedding, the paper's simple baseline) and ``ssl_weight > 0`` (plus the
student's own in-batch InfoNCE between its two global views).

The teacher (read by :func:`sslkd.teachers.load_teachers`, passed in as ``teachers``) is frozen and
saved in checkpoints;
evaluation always reads the student (``eval_backbone`` ignores ``which``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sslkd.errors import ConfigError, TeacherError
from sslkd.losses.seed import EmbeddingRegressionLoss, FeatureQueue, InfoNCELoss, SEEDLoss
from sslkd.methods.base import Method, MethodContext, StepInfo
from sslkd.methods.registry import register
from sslkd.models import Backbone, Encoder, projection_mlp
from sslkd.models.teacher import FrozenTeacher, TeacherConfig
from sslkd.schema import NonNegative, NonNegativeFloat, Positive, PositiveFloat


@dataclass
class SEEDConfig(TeacherConfig):
    name: str = "seed"  # the method (sslkd info lists them)
    teacher: str = ""  # sslkd run folder / checkpoint, a .pth/.safetensors file, or timm:<model>
    # auto: the teacher's projection head where its checkpoint has one (SEED distils the teacher's output
    # embedding; DINO/iBOT heads: their bottleneck), else its backbone | head | backbone (CLS/pooled)
    teacher_features: Literal["auto", "backbone", "head"] = "auto"
    hidden_dim: NonNegative = 0  # student head's hidden width (0: the student's width)
    use_bn_in_head: bool = False  # SEED's code (MoCo v2's head) has none
    queue_size: Positive = 65536  # teacher embeddings kept as negatives
    tau_s: PositiveFloat = 0.2  # student temperature
    tau_t: PositiveFloat = 0.01  # teacher temperature (the paper's review; the official code's default is 1e-4)
    loss: Literal["seed", "l2", "cosine"] = "seed"  # seed | l2 | cosine (regression baselines)
    ssl_weight: NonNegativeFloat = 0.0  # > 0: + the student's own InfoNCE between its two global views
    ssl_temp: PositiveFloat = 0.2  # temperature of that InfoNCE

    def teacher_sources(self) -> list[str]:
        return [self.teacher]

    def teacher_output(self) -> str:
        return self.teacher_features

    def validate(self) -> None:
        if not self.teacher:
            raise ConfigError("method.teacher: must name the teacher (a run, a file or timm:<model>)")


@register("seed")
class SEED(Method):
    config_class = SEEDConfig

    needs_teachers = True
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
        backbone = self.build_backbone()
        if eval_only:  # evaluation reads only the student's backbone: no teacher file needed
            self.student = Encoder(backbone, nn.Identity())
            return
        if not teachers or len(teachers) != 1:
            raise TeacherError(
                "SEED distils one frozen teacher: pass teachers=[...] "
                "(sslkd.teachers.load_teachers(cfg.method, in_chans))"
            )
        self.teacher: FrozenTeacher = teachers[0]
        dim = self.teacher.out_dim
        head = projection_mlp(backbone.embed_dim, m.hidden_dim or backbone.embed_dim, dim, m.use_bn_in_head)
        self.student = Encoder(backbone, head)
        self.queue = FeatureQueue(m.queue_size, dim)
        self.seed_loss = SEEDLoss(m.tau_s, m.tau_t)
        self.regression = EmbeddingRegressionLoss(m.loss) if m.loss != "seed" else None
        self.ssl_loss = InfoNCELoss(m.ssl_temp)

    def forward(self, views: list[torch.Tensor], info: StepInfo):
        x = views[0]
        t = self.teacher(x)
        s_feat, s = self.student(x)
        terms: dict[str, torch.Tensor] = {}
        if self.regression is None:
            terms["seed"] = self.seed_loss(s, t, self.queue.queue)
        else:
            terms[self.ctx.method.loss] = self.regression(s, t)
        if self.ctx.method.ssl_weight > 0:
            _, s2 = self.student(views[1])
            terms["ssl"] = self.ctx.method.ssl_weight * self.ssl_loss(s, s2)
        loss = sum(terms.values())
        with torch.no_grad():
            sn = nn.functional.normalize(s.float(), dim=-1)
            tn = nn.functional.normalize(t.float(), dim=-1)
            # agreement: the student's and the teacher's most similar queue entry coincide
            agree = ((sn @ self.queue.queue.T).argmax(-1) == (tn @ self.queue.queue.T).argmax(-1)).float().mean()
            metrics = {
                "cosine_to_teacher": (sn * tn).sum(-1).mean(),
                "agreement": agree,
                "feature_std": nn.functional.normalize(s_feat.float(), dim=-1).std(0).mean(),
            }
        self.queue.enqueue(t)  # after the loss: the current batch is not its own negative
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}, metrics

    @classmethod
    def teacher_overrides(cls, sources: list[str]) -> dict:
        if len(sources) != 1:
            raise ConfigError(
                "--teacher: SEED distils one teacher (a run folder, checkpoint, weight file or timm:<model>)"
                if sources
                else "--method seed distils a frozen teacher: name it with --teacher RUN|FILE|timm:<model>"
            )
        return {"teacher": sources[0]}

    def load_for_eval(self, state: dict[str, torch.Tensor]) -> None:
        prefix = "student.backbone."
        self.student.backbone.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})

    def eval_backbone(self, which: str = "teacher", model: int = 1) -> Backbone:
        """The student's backbone (the teacher is the frozen source model, evaluated on its own)."""
        self.check_model(model)
        return self.student.backbone
