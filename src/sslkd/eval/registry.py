"""Evaluation protocols as registered objects: each is one module defining a :class:`Protocol`
subclass (its name, a one-line help, a typed ``Options`` dataclass) and registering it with
:func:`register`. The CLI's ``sslkd eval <protocol>`` flags, the Python API's keywords, the
experiment tables and the training monitor all come from :data:`PROTOCOLS`.

A protocol either scores frozen features (``frozen = True``: :meth:`Protocol.score`, the features
of the training and test images extracted once for every frozen protocol asked for) or trains a
copy of the backbone (:meth:`Protocol.run`)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sslkd.errors import ConfigError
from sslkd.schema import check, from_dict


@dataclass
class Features:
    """Frozen features of the two splits: ``train`` ``[N, D]`` with ``train_labels`` ``[N]``, the
    same for ``test``; ``num_classes``; ``seed`` for whatever a protocol draws at random."""

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    seed: int = 0


@dataclass
class Context:
    """What a protocol that trains the backbone gets besides its options: the two datasets, the
    normalisation and image size the backbone expects, and where and how to run."""

    train: Any
    test: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    device: torch.device
    seed: int = 0
    batch_size: int = 256
    num_workers: int = 0
    progress: bool = False


class Protocol:
    """One evaluation protocol. Subclasses set ``name``, ``help`` and ``Options`` (a dataclass whose
    typed fields, with ``metadata={"help": ...}``, become the CLI's flags and the API's keywords),
    and implement :meth:`score` (``frozen``) or :meth:`run`."""

    name: ClassVar[str]
    help: ClassVar[str]
    Options: ClassVar[type]
    frozen: ClassVar[bool] = True
    title: ClassVar[str] = ""  # a table's column heading (default: the name)
    chosen: ClassVar[str | None] = None  # the result key of the hyper-parameter it chose, shown in tables

    def score(self, features: Features, options: Any) -> dict:
        """``{"top1", "top5", ...}`` (%) on the test features, learnt from the training ones."""
        raise NotImplementedError(f"{self.name} does not score frozen features")

    def run(self, backbone: torch.nn.Module, ctx: Context, options: Any) -> dict:
        """``{"top1", "top5", ...}`` (%) after training ``backbone`` (a copy the caller gives away)."""
        raise NotImplementedError(f"{self.name} scores frozen features")

    def describe(self, result: dict, options: Any) -> list[str]:
        """The lines the CLI prints before the figures: what was measured, and any per-setting detail."""
        return [self.help]

    def columns(self, result: dict) -> dict:
        """The flat figures a table keeps of ``result`` (default: every number in it)."""
        return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def result_file(self, options: Any) -> str | None:
        """The file name under a run folder where ``sslkd eval`` keeps this protocol's result (None: not kept)."""
        return None


PROTOCOLS: dict[str, Protocol] = {}


def register(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator: make ``cls`` available by its ``name``."""
    if cls.name in PROTOCOLS:
        raise ValueError(f"protocol '{cls.name}' is registered twice")
    cls.title = cls.title or cls.name
    PROTOCOLS[cls.name] = cls()
    return cls


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{name}'; available: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def options_of(name: str, values: Any = None) -> Any:
    """Protocol ``name``'s typed options from a mapping (checked by type, an unknown key named with
    the valid ones; a single value where the field takes a list is a list of one), from an
    ``Options`` instance (re-checked), or defaults (None)."""
    cls = get_protocol(name).Options
    if isinstance(values, cls):
        check(values, f"{name}.")
        return values
    values = dict(values or {})
    hints = typing.get_type_hints(cls, include_extras=True)
    for key, value in values.items():
        if key in hints and _is_sequence(hints[key]) and not isinstance(value, (list, tuple)):
            values[key] = [value]
    return from_dict(cls, values, name)


def _is_sequence(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _is_sequence(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(tp))
    return origin in (tuple, list)


def option_fields(name: str) -> list[dataclasses.Field]:
    """The fields of protocol ``name``'s options, in order (their metadata's ``help`` included)."""
    return list(dataclasses.fields(get_protocol(name).Options))
