"""Methods by name. Each registers its class and its typed config dataclass."""

from __future__ import annotations

from sslkd.methods.base import Method, StepInfo
from sslkd.methods.dino import DINO, DINOConfig
from sslkd.methods.ibot import IBOT, IBOTConfig

METHODS: dict[str, type[Method]] = {"dino": DINO, "ibot": IBOT}


def method_config_class(name: str) -> type:
    from sslkd.config import ConfigError
    if name not in METHODS:
        raise ConfigError(f"method.name: unknown method '{name}'; available: {', '.join(METHODS)}")
    return METHODS[name].config_class


def build_method(cfg, in_chans: int, img_size: int) -> Method:
    """Instantiate ``cfg.method.name`` for images of ``in_chans`` channels and ``img_size`` pixels."""
    return METHODS[cfg.method.name](cfg, in_chans, img_size)


__all__ = ["DINO", "DINOConfig", "IBOT", "IBOTConfig", "METHODS", "Method", "StepInfo", "build_method", "method_config_class"]
