"""Methods by name. Each registers its class and its typed config dataclass."""

from __future__ import annotations

from sslkd.methods.base import Method, StepInfo
from sslkd.methods.dino import DINO, DINOConfig
from sslkd.methods.dmt import DMT, DMTConfig
from sslkd.methods.ibot import IBOT, IBOTConfig
from sslkd.methods.mae import MAE, MAEConfig
from sslkd.methods.mocov3 import MoCoV3, MoCoV3Config
from sslkd.methods.mokd import MOKD, MOKDConfig
from sslkd.methods.seed import SEED, SEEDConfig

METHODS: dict[str, type[Method]] = {"dino": DINO, "dmt": DMT, "ibot": IBOT, "mae": MAE, "mocov3": MoCoV3, "mokd": MOKD,
                                    "seed": SEED}


def method_config_class(name: str) -> type:
    from sslkd.config import ConfigError
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"method.name: unknown method '{name}'; available: {', '.join(METHODS)}")
    return METHODS[name].config_class


def build_method(cfg, in_chans: int, img_size: int, eval_only: bool = False) -> Method:
    """Instantiate ``cfg.method.name`` for images of ``in_chans`` channels and ``img_size`` pixels;
    ``eval_only`` skips what only training needs (a distillation method's frozen source teacher)."""
    return METHODS[cfg.method.name](cfg, in_chans, img_size, eval_only=eval_only)


__all__ = ["DINO", "DMT", "IBOT", "METHODS", "MAE", "MAEConfig", "MOKD", "MoCoV3", "MoCoV3Config", "SEED", "DINOConfig", "DMTConfig", "IBOTConfig", "MOKDConfig", "Method",
           "SEEDConfig", "StepInfo", "build_method", "method_config_class"]
