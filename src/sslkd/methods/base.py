"""What every method is: a module that builds its networks and turns a batch into named losses.

The training engine (:mod:`sslkd.train`) only calls the hooks below; it knows nothing of
teachers, centres or heads.
"""

from __future__ import annotations

import abc
import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sslkd.errors import ConfigError, NoSuchModelError, TeacherError
from sslkd.models import Backbone, ModelConfig, ViTBackbone, build_backbone, is_vit
from sslkd.models.teacher import load_into


@dataclass
class StepInfo:
    """Where training is: ``epoch`` is fractional (step / steps_per_epoch; under a time budget's
    plan, the share of ``epochs`` done, so that warm-ups counted in epochs keep their share of the
    run, :meth:`sslkd.train.Trainer.progress_epochs`). The global batch of a
    step is split over ``world_size`` processes and ``accum_steps`` micro-batches: this process's
    micro-batch ``micro`` holds the images at global positions ``rank + world_size * (micro * b + k)``
    (``b`` the micro-batch size), see :meth:`global_positions`."""

    step: int
    epoch: float
    total_steps: int
    epochs: int
    micro: int = 0  # micro-batch index within the optimiser step (gradient accumulation)
    accum_steps: int = 1
    rank: int = 0
    world_size: int = 1

    @property
    def shards(self) -> int:
        """Number of (process, micro-batch) pieces the global batch is cut into."""
        return self.world_size * self.accum_steps

    def global_positions(self, b: int) -> torch.Tensor:
        """Positions in the global batch (of ``shards * b`` images) of this micro-batch's images."""
        return self.rank + self.world_size * (self.micro * b + torch.arange(b))


@dataclass(frozen=True)
class MethodContext:
    """What a method is built from: its own config section and the few run-wide settings it
    reads (:func:`sslkd.methods.build_method` makes it from a run's config)."""

    method: Any  # the method's own section, an instance of its ``config_class``
    model: ModelConfig  # the (first) backbone it trains
    seed: int = 0  # the run's seed (iBOT's masks are drawn from it)
    init_seed: int = 0  # the seed the networks are initialised from
    optimizer: str = "adamw"  # train.optimizer: what the default optimiser spec asks for

    @classmethod
    def of(cls, cfg) -> MethodContext:
        """The context of a run's :class:`~sslkd.config.Config`."""
        return cls(cfg.method, cfg.model, cfg.seed, cfg.init_seed, cfg.train.optimizer)


class Method(nn.Module, abc.ABC):
    """Base class. Subclasses set ``student`` (trained) and usually ``teacher`` (EMA copy), and
    declare what the engine must know about them as class attributes (the engine never asks
    for a method by name):

    - ``config_class``: the typed dataclass of the ``method`` config section;
    - ``method_name``: its name in configs and on the CLI (set by ``@register``);
    - ``paired_views``: the views are one crop twice, plain and colour-jittered (DMT);
    - ``num_models``: how many models it trains (``eval_backbone(model=...)``);
    - ``needs_teachers``: training needs frozen teachers, loaded by the engine from the config
      (a :class:`~sslkd.models.teacher.TeacherConfig`) and passed as ``teachers``;
    - ``needs_vit``: why it trains ViTs only (empty: any backbone);
    - ``local_crops``: whether it learns from local crops (a run without a YAML file gets some).

    Class methods give what a run without a YAML file takes (:meth:`first_run`,
    :meth:`teacher_overrides`) and how results name a run (:meth:`row_label`, :meth:`backbones`).
    """

    config_class: type
    method_name: str = ""
    paired_views: bool = False
    needs_teachers: bool = False
    num_models: int = 1  # models trained side by side, each evaluable (MOKD: 2)
    needs_vit: str = ""  # e.g. "masks patches": the reason said when a CNN is configured
    local_crops: bool = True

    def __init__(
        self, ctx: MethodContext, in_chans: int, img_size: int, eval_only: bool = False, weights: dict | None = None
    ) -> None:
        """``weights``: ``{model.pretrained spec: Weights}``, resolved by :func:`sslkd.teachers.load_weights`
        (the engine does it): the backbones whose ``pretrained`` names them start from those weights."""
        super().__init__()
        self.ctx, self.in_chans, self.img_size, self.eval_only = ctx, in_chans, img_size, eval_only
        self.weights = weights or {}
        self.weight_reports: list = []  # how each pretrained backbone was loaded (the engine prints them)

    @abc.abstractmethod
    def forward(
        self, views: list[torch.Tensor], info: StepInfo
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``views``: list of ``[B, C, H, W]`` crops (globals first). Returns ``(losses, metrics)``:
        ``losses["loss"]`` is the total to back-propagate, other entries its named terms;
        ``metrics`` are detached diagnostics (entropy, feature std, agreement). Methods with
        :meth:`batch_features` also take ``cached``: that micro-batch's cached gradients."""

    def has_batch_losses(self) -> bool:
        """Whether a loss couples the images of the whole batch (then accumulation caches gradients)."""
        return False

    def batch_features(self, views: list[torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor] | None:
        """Features (``[b, ...]``, batch first) of this micro-batch that enter losses coupling the
        images of the whole batch, or ``None`` when there are none this step. With gradient
        accumulation the engine runs this for every micro-batch without gradients, computes
        :meth:`batch_losses` on the concatenation and passes each micro-batch's slice of their
        gradients to ``forward(views, info, cached)`` (:mod:`sslkd.train.gradcache`)."""
        return None

    def batch_losses(self, features: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        """The batch-level losses (name -> scalar) of :meth:`batch_features`' output concatenated
        over micro-batches (gathering over processes as ``forward`` does). Their sum is what gets
        differentiated: with several terms, return them weighted as ``forward`` adds them."""
        return {}

    @classmethod
    def first_run(cls, epochs: int, model: dict) -> dict:
        """Config overrides (a nested mapping) that a run without a YAML file of ``epochs`` epochs
        training ``model`` (its ``model`` section: backbone, patch_size, small_stem) takes for this
        method, beyond the config classes' defaults (the paper's recipe where it differs from the
        general one)."""
        return {}

    @classmethod
    def check_backbone(cls, backbone: str) -> None:
        """Refuse a backbone the method cannot train, naming why (:attr:`needs_vit`)."""
        if cls.needs_vit and not is_vit(backbone):
            raise ConfigError(
                f"{cls.method_name} {cls.needs_vit} and needs a ViT backbone, got '{backbone}' "
                f"(vit_tiny, vit_small, vit_base or a timm ViT)"
            )

    @classmethod
    def teacher_overrides(cls, sources: list[str]) -> dict:
        """The ``method`` keys that name ``sources`` (``--teacher``, given in order) as this method's
        teachers; a method without teachers refuses any."""
        if sources:
            raise ConfigError(f"--teacher: {cls.method_name} takes no teacher")
        return {}

    @classmethod
    def row_label(cls, method_cfg) -> str | None:
        """What a results table calls a run of this method when the config's section says more than
        its name (iBOT: its distillation mode), else ``None``."""
        return None

    @classmethod
    def backbones(cls, cfg) -> list[str]:
        """The backbone of every model a run of ``cfg`` trains, in model order (MOKD: two)."""
        return [cfg.model.backbone]

    def build_backbone(self, mc: ModelConfig | None = None) -> Backbone:
        """The backbone ``mc`` (default ``ctx.model``) describes, for this method's images, starting
        from ``mc.pretrained``'s weights when it names some (not for evaluation: the checkpoint has them)."""
        mc = mc or self.ctx.model
        self.check_backbone(mc.backbone)
        bb = build_backbone(
            mc.backbone, self.img_size, mc.patch_size, self.in_chans, mc.drop_path_rate, mc.small_stem, mc.depth
        )
        if mc.pretrained and not self.eval_only:
            if mc.pretrained not in self.weights:
                raise TeacherError(
                    f"model.pretrained={mc.pretrained}: its weights were not loaded; build the method with "
                    f"weights=sslkd.teachers.load_weights(cfg) (the training engine does)"
                )
            w = self.weights[mc.pretrained]
            if w is not None:  # None: a resumed run, whose checkpoint holds the weights
                self.weight_reports.append(load_into(bb, w.state, w.layout, w.source))
        return bb

    def crop_multiple(self) -> int:
        """What crop sizes must be a multiple of: the patch size of every ViT the method trains
        (their least common multiple; 1 for CNNs). Frozen teachers do not count: they resize."""
        sizes = {
            m.patch_size
            for m in self.modules()
            if isinstance(m, ViTBackbone) and any(p.requires_grad for p in m.parameters())
        }
        return math.lcm(*sizes) if sizes else 1

    def on_optimizer_step(self, momentum: float) -> None:
        """Once per optimiser step (not per micro-batch): EMA teacher, centres."""

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """What the optimiser updates: the student's parameters."""
        return [(f"student.{n}", p) for n, p in self.student.named_parameters() if p.requires_grad]

    def optimizer_specs(self) -> list[dict]:
        """How the engine optimises: a list of ``{"params": [(name, param)], "kind": "adamw" | "sgd",
        "lr": base lr or None (train.base_lr), "weight_decay": constant or None (the schedule)}``,
        one optimiser each; learning rates follow the engine's warmup + cosine shape."""
        return [{"params": self.trainable_parameters(), "kind": self.ctx.optimizer}]

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter sets whose gradients are clipped by norm separately (one per trained model)."""
        return [[p for _, p in self.trainable_parameters()]]

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen at the start of the run (``train.freeze_last_layer``)."""
        return [p for n, p in self.named_parameters() if "last_layer" in n and p.requires_grad]

    def load_for_eval(self, state: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's ``method`` state into a method built with ``eval_only``."""
        self.load_state_dict(state)

    def check_model(self, model: int) -> None:
        """Refuse a model index this method does not train (:class:`NoSuchModelError`)."""
        if not 1 <= model <= self.num_models:
            n = self.num_models
            trains = "one model" if n == 1 else f"models {', '.join(map(str, range(1, n)))} and {n}"
            raise NoSuchModelError(f"{type(self).__name__} trains {trains}; there is no model {model}")

    def eval_backbone(self, which: str = "teacher", model: int = 1) -> Backbone:
        """The backbone evaluated by kNN/linear probes (``teacher`` or ``student``; ``model`` for
        methods that train several)."""
        self.check_model(model)
        return (self.teacher if which == "teacher" else self.student).backbone


def ema_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student`` (drop-path off) to be updated by :func:`ema_update`."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for m in teacher.modules():  # the teacher sees whole networks: no stochastic depth
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t <- m θ_t + (1 - m) θ_s`` for every parameter, with fused foreach ops. Buffers (BatchNorm
    statistics) are not copied: the teacher keeps the statistics of its own forward passes, which
    match its averaged weights (as in DINO)."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1 - momentum)


def cached_gradient_term(features: torch.Tensor, cached: dict, key: str, accum_steps: int) -> torch.Tensor:
    """A zero-valued term whose gradient is the whole batch's loss gradient for this micro-batch's
    ``features [b, ...]`` (``cached`` from :func:`sslkd.train.gradcache.cache_batch_gradients`):
    ``accum_steps * <features, cached gradient>``, as the engine divides each micro-batch's loss by
    ``accum_steps``. Warns when the features differ from pass 1's (a forward that does not replay:
    the gradient is then that of nearby features)."""
    if not torch.allclose(features.detach().float(), cached["features"][key].float(), rtol=1e-3, atol=1e-4):
        warnings.warn(
            f"gradient caching: '{key}' features differ between the two passes of a micro-batch "
            "(non-deterministic forward); accumulated gradients are approximate",
            stacklevel=2,
        )
    link = (features.float() * cached["grads"][key].to(features.device).float()).sum() * accum_steps
    return link - link.detach()
