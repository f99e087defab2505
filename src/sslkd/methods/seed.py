"""SEED (Fang et al., ICLR 2021): distil a frozen self-supervised teacher into a small student.

Teacher and student see the same crop (the first global view). The student's backbone feeds an
MLP head (Linear - BN - ReLU - Linear) to the teacher's embedding width; the loss is
:class:`~sslkd.losses.SEEDLoss` over a FIFO queue of L2-normalised teacher embeddings, into which
the batch (of every process) is enqueued after the loss. Ablations: ``loss: l2 | cosine`` (plain
regression to the teacher embedding, the paper's simple baseline) and ``ssl_weight > 0`` (plus the
student's own in-batch InfoNCE between its two global views).

The teacher (see :func:`sslkd.models.teacher.load_teacher`) is frozen and saved in checkpoints;
evaluation always reads the student (``eval_backbone`` ignores ``which``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslkd.losses.seed import EmbeddingRegressionLoss, FeatureQueue, InfoNCELoss, SEEDLoss
from sslkd.methods.base import Method, StepInfo
from sslkd.methods.dino import Encoder
from sslkd.models import Backbone
from sslkd.models.teacher import FrozenTeacher, TeacherError, load_teacher


@dataclass
class SEEDConfig:
    name: str = "seed"
    teacher: str = ""  # sslkd run folder / checkpoint, a .pth/.safetensors file, or timm:<model>
    teacher_weights: str = "teacher"  # teacher (EMA / momentum encoder) | student
    # auto: the teacher's projection head where its checkpoint has one (SEED distils the teacher's output
    # embedding; DINO/iBOT heads: their bottleneck), else its backbone | head | backbone (CLS/pooled)
    teacher_features: str = "auto"
    teacher_arch: str | None = None  # external files: vit_small, resnet50, ...
    teacher_patch_size: int = 16
    teacher_img_size: int | None = None  # resize the student's crop for the teacher (None: as is)
    teacher_small_stem: bool = False
    hidden_dim: int = 0  # student head's hidden width (0: the student's width)
    use_bn_in_head: bool = False  # SEED's code (MoCo v2's head) has none
    queue_size: int = 65536
    tau_s: float = 0.2
    tau_t: float = 0.01  # the paper's review; the official code's default is 1e-4
    loss: str = "seed"  # seed | l2 | cosine
    ssl_weight: float = 0.0  # > 0: + the student's own InfoNCE between its two global views
    ssl_temp: float = 0.2

    def validate(self) -> None:
        from sslkd.config import ConfigError
        checks = [("teacher", bool(self.teacher), "must name the teacher (a run, a file or timm:<model>)"),
                  ("teacher_weights", self.teacher_weights in ("teacher", "student"), "must be teacher or student"),
                  ("teacher_features", self.teacher_features in ("auto", "backbone", "head"),
                   "must be auto, backbone or head"),
                  ("queue_size", self.queue_size >= 1, "must be >= 1"),
                  ("tau_s", self.tau_s > 0, "must be positive"), ("tau_t", self.tau_t > 0, "must be positive"),
                  ("loss", self.loss in ("seed", "l2", "cosine"), "must be seed, l2 or cosine"),
                  ("ssl_weight", self.ssl_weight >= 0, "must be >= 0"),
                  ("hidden_dim", self.hidden_dim >= 0, "must be >= 0")]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"method.{key}: {why} (got {getattr(self, key)!r})")


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, use_bn: bool = True) -> nn.Sequential:
    """SEED's / MoCo v2's student head: Linear - ReLU - Linear (``use_bn``: a BatchNorm after the
    first Linear, not in SEED's code)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim) if use_bn else nn.Identity(),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class SEED(Method):
    config_class = SEEDConfig

    def __init__(self, cfg, in_chans: int, img_size: int, eval_only: bool = False) -> None:
        super().__init__(cfg, in_chans, img_size, eval_only)
        m = cfg.method
        backbone = self.build_backbone()
        if eval_only:  # evaluation reads only the student's backbone: no teacher file needed
            self.student = Encoder(backbone, nn.Identity())
            return
        self.teacher: FrozenTeacher = self.load_teacher()
        self.report = self.teacher.report
        dim = self.teacher.out_dim
        head = projection_mlp(backbone.embed_dim, m.hidden_dim or backbone.embed_dim, dim, m.use_bn_in_head)
        self.student = Encoder(backbone, head)
        self.queue = FeatureQueue(m.queue_size, dim)
        self.seed_loss = SEEDLoss(m.tau_s, m.tau_t)
        self.regression = EmbeddingRegressionLoss(m.loss) if m.loss != "seed" else None
        self.ssl_loss = InfoNCELoss(m.ssl_temp)

    def load_teacher(self) -> FrozenTeacher:
        m = self.cfg.method
        teacher, report = load_teacher(m.teacher, m.teacher_weights, m.teacher_features, m.teacher_arch,
                                       m.teacher_patch_size, m.teacher_img_size, self.in_chans, m.teacher_small_stem)
        if teacher.in_chans != self.in_chans:
            raise TeacherError(f"teacher {m.teacher} takes {teacher.in_chans}-channel images, "
                               f"the data has {self.in_chans}")
        teacher.report = report
        return teacher

    def forward(self, views: list[torch.Tensor], info: StepInfo):
        x = views[0]
        t = self.teacher(x)
        s_feat, s = self.student(x)
        terms: dict[str, torch.Tensor] = {}
        if self.regression is None:
            terms["seed"] = self.seed_loss(s, t, self.queue.queue)
        else:
            terms[self.cfg.method.loss] = self.regression(s, t)
        if self.cfg.method.ssl_weight > 0:
            _, s2 = self.student(views[1])
            terms["ssl"] = self.cfg.method.ssl_weight * self.ssl_loss(s, s2)
        loss = sum(terms.values())
        with torch.no_grad():
            sn = nn.functional.normalize(s.float(), dim=-1)
            tn = nn.functional.normalize(t.float(), dim=-1)
            # agreement: the student's and the teacher's most similar queue entry coincide
            agree = ((sn @ self.queue.queue.T).argmax(-1) == (tn @ self.queue.queue.T).argmax(-1)).float().mean()
            metrics = {"cosine_to_teacher": (sn * tn).sum(-1).mean(), "agreement": agree,
                       "feature_std": nn.functional.normalize(s_feat.float(), dim=-1).std(0).mean()}
        self.queue.enqueue(t)  # after the loss: the current batch is not its own negative
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}, metrics

    def load_for_eval(self, state: dict[str, torch.Tensor]) -> None:
        prefix = "student.backbone."
        self.student.backbone.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def eval_backbone(self, which: str = "teacher", model: int = 1) -> Backbone:
        """The student's backbone (the teacher is the frozen source model, evaluated on its own)."""
        if model != 1:
            raise ValueError(f"SEED trains one model; --model {model} does not exist")
        return self.student.backbone
