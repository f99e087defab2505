"""Methods by name. Each registers its class (``@register``) and its typed config dataclass."""

from __future__ import annotations

from sslkd.methods.base import Method, MethodContext, StepInfo
from sslkd.methods.dino import DINO, DINOConfig
from sslkd.methods.dmt import DMT, DMTConfig
from sslkd.methods.ibot import IBOT, IBOTConfig
from sslkd.methods.mae import MAE, MAEConfig
from sslkd.methods.mocov3 import MoCoV3, MoCoV3Config
from sslkd.methods.mokd import MOKD, MOKDConfig
from sslkd.methods.registry import METHODS, method_class, method_config_class
from sslkd.methods.seed import SEED, SEEDConfig
from sslkd.models.teacher import FrozenTeacher


def build_method(
    cfg,
    in_chans: int,
    img_size: int,
    eval_only: bool = False,
    teachers: list[FrozenTeacher] | None = None,
    weights: dict | None = None,
) -> Method:
    """Instantiate ``cfg.method.name`` for images of ``in_chans`` channels and ``img_size`` pixels;
    ``eval_only`` skips what only training needs (a distillation method's frozen teachers);
    ``teachers``: a distillation method's frozen teachers (:func:`sslkd.teachers.load_teachers`);
    ``weights``: the ``model.pretrained`` weights (:func:`sslkd.teachers.load_weights`)."""
    kwargs = {} if teachers is None else {"teachers": teachers}
    cls = method_class(cfg.method.name)
    return cls(MethodContext.of(cfg), in_chans, img_size, eval_only=eval_only, weights=weights, **kwargs)


__all__ = [
    "DINO",
    "DMT",
    "IBOT",
    "MAE",
    "METHODS",
    "MOKD",
    "SEED",
    "DINOConfig",
    "DMTConfig",
    "IBOTConfig",
    "MAEConfig",
    "MOKDConfig",
    "Method",
    "MethodContext",
    "MoCoV3",
    "MoCoV3Config",
    "SEEDConfig",
    "StepInfo",
    "build_method",
    "method_class",
    "method_config_class",
]
