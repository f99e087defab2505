"""Methods by name: each method class registers itself (``@register("dino")``) with its typed
config dataclass (``config_class``). Importing :mod:`sslkd.methods` registers them all."""

from __future__ import annotations

from sslkd.errors import ConfigError

METHODS: dict[str, type] = {}


def register(name: str):
    """Class decorator: the method is ``name`` in configs (``method.name``) and on the CLI."""

    def add(cls: type) -> type:
        if name in METHODS:
            raise ValueError(f"method '{name}' is registered twice")
        METHODS[name] = cls
        cls.method_name = name
        return cls

    return add


def method_class(name: str) -> type:
    """The class registered as ``name`` (an unknown name is a one-line error naming the valid ones)."""
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"method.name: unknown method '{name}'; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_config_class(name: str) -> type:
    """The config dataclass of method ``name``."""
    return method_class(name).config_class
