"""Typed configuration sections: dataclasses whose field types do the checking.

A field's type says what it accepts, and :func:`from_dict` enforces it on YAML / ``key=value``
input with an error that names the key:

- ``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[...]``, ``list[...]``, nested dataclasses;
- ``Literal["a", "b"]``: one of the choices;
- ``Annotated[float, Range(gt=0)]`` (aliases :data:`Positive`, :data:`Probability`, ...): bounds.

:func:`check` re-checks a built (possibly edited) instance; cross-field rules stay in the
section's ``validate()``. ``field(metadata={"type_of": f})`` types a section by its content or
its neighbours' (``f(mapping, parent mapping) -> dataclass``: ``method`` is typed by
``method.name``, ``data.options`` by ``data.name``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml

from sslkd.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Bounds of a number (``None``: unbounded); ``str()`` is how errors and docs write them."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def ok(self, v: float) -> bool:
        return (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )

    def __str__(self) -> str:
        lo = self.gt if self.gt is not None else self.ge
        hi = self.lt if self.lt is not None else self.le
        if lo is not None and hi is not None:
            return f"in {'(' if self.gt is not None else '['}{lo:g}, {hi:g}{')' if self.lt is not None else ']'}"
        if lo is not None:
            return f"{'>' if self.gt is not None else '>='} {lo:g}"
        return f"{'<' if self.lt is not None else '<='} {hi:g}" if hi is not None else "any number"


Positive = Annotated[int, Range(gt=0)]
NonNegative = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Probability = Annotated[float, Range(ge=0, le=1)]
Fraction = Annotated[float, Range(gt=0, le=1)]  # a share of something that cannot be empty

__all__ = [
    "ConfigError",
    "Fraction",
    "NonNegative",
    "NonNegativeFloat",
    "Positive",
    "PositiveFloat",
    "Probability",
    "Range",
    "apply_overrides",
    "check",
    "coerce",
    "describe",
    "from_dict",
    "parse_override",
    "to_dict",
]


def describe(tp: Any) -> str:
    """A type as the docs and errors write it: ``int > 0``, ``fp32 | bf16``, ``float | None``."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        rng = next((m for m in meta if isinstance(m, Range)), None)
        return f"{describe(base)} {rng}" if rng else describe(base)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else describe(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else describe(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp``, named ``key`` in errors (YAML lists become
    tuples where typed so)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        value = coerce(value, base, key)
        for m in meta:
            if isinstance(m, Range) and value is not None and not all(m.ok(v) for v in _numbers(value)):
                raise ConfigError(f"{key}: must be {m} (got {value!r})")
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))} (got {value!r})")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        bounded = [e for e in errors if ": must be" in e]  # the right type, out of range: say that
        raise ConfigError(bounded[0] if bounded else f"{key}: expected {describe(tp)}, got {value!r}")
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        out = [coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    return _scalar(value, tp, key)


def _scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    if tp is str and isinstance(value, str):
        return value
    if tp not in (bool, int, float, str):
        raise ConfigError(f"{key}: unsupported type {tp}")
    wanted = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[tp]
    raise ConfigError(f"{key}: expected {wanted}, got {value!r}")


def _numbers(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with suggestions."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint} (valid: {', '.join(fields)})")
        type_of = fields[key].metadata.get("type_of")
        if type_of:  # a section typed by its content; none given (null) stays None
            kwargs[key] = None if value is None else from_dict(type_of(value, data), value, full)
        else:
            kwargs[key] = coerce(value, hints[key], full)
    return cls(**kwargs)


def check(obj: Any, prefix: str = "") -> None:
    """Re-check every field of a built dataclass (and its sections) against its type."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check(value, key + ".")
        elif hints[f.name] is not Any:
            coerce(value, hints[f.name], key)


def to_dict(cfg: Any) -> dict:
    """Plain-python view of a config (lists for tuples), safe to store in YAML or checkpoints."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(
            f"override '{text}': the value is not valid YAML ({str(e).splitlines()[0]}); quote it or close its brackets"
        ) from e
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides to a raw config mapping (validated later by :func:`from_dict`)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return data
