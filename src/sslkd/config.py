"""Typed experiment configuration: dataclasses loaded from YAML, with ``key=value`` overrides.

A config file mirrors :class:`Config`. Unknown keys, wrong types and impossible values raise
:class:`ConfigError` naming the key (and the closest valid keys) before any work starts.
The ``method`` section is typed by the method it names (``method.name``), see
:mod:`sslkd.methods`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the offending key."""


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    download: bool = False
    img_size: int | None = None  # resize images to this size; None keeps the dataset's size
    subset_fraction: float = 1.0
    num_workers: int = 0
    on_corrupt: str = "fail"  # a file that cannot be decoded: fail (stop, naming it) or skip (replace, count)
    in_memory: bool | None = None  # imagefolder: decode all images into memory (None: when small and one size)
    labels: str = "auto"  # imagefolder: auto (class folders when unambiguous), folders, none
    augment_on: str = "loader"  # loader: per image in loader workers; device: batched on the training device (photos: workers crop, the device colours)


@dataclass
class AugConfig:
    global_crops_size: int | None = None  # None: the image size
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_number: int = 0
    local_crops_size: int | None = None  # None: about 3/7 of the image size (96/224 in DINO)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    flip_p: float = 0.5
    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, locals
    solarize_p: float = 0.2  # second global crop only, as in DINO/BYOL
    paired: bool = False  # one crop, plain + colour-jittered (DMT: teachers see it plain)


@dataclass
class ModelConfig:
    backbone: str = "vit_tiny"
    patch_size: int = 4
    drop_path_rate: float = 0.1
    small_stem: bool = True  # CNNs: 3x3 stride-1 stem without max-pool, for small images
    depth: int | None = None  # ViT depth override (None: the architecture's own)
    init_seed: int | None = None  # seeds weights and drop-path draws (None: `seed`); data order, crops, masks keep `seed`


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64
    accum_steps: int = 1
    base_lr: float = 5e-4  # scaled by batch_size / 256 (batch_size is per optimiser step)
    min_lr: float = 1e-6
    warmup_epochs: float = 10  # may be fractional (short budgets)
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0
    clip_grad: float = 3.0  # 0 disables
    clip_mode: str = "norm"  # "norm": global norm; "per_param": per tensor, as iBOT's code
    # epochs during which the head's last layer is not updated (None: the first 1% of the run, what
    # DINO/iBOT's 1 of 100-800 epochs means; a freeze covering the whole run is refused)
    freeze_last_layer: float | None = None
    precision: str = "auto"  # auto (bf16 where native, else fp32) | fp32 | bf16 | fp16
    tune_malloc: bool = True  # CPU runs: glibc malloc keeps freed memory (sslkd.device.tune_cpu_malloc)
    compile: bool = False  # torch.compile each backbone and head (first steps pay the compilation)
    parallel: str = "ddp"  # several processes: ddp (replicated) | fsdp (sharded weights, grads, optimiser)
    ckpt_every_steps: int = 0  # 0: at the end of every epoch only
    keep_last: int = 3
    log_every: int = 10
    max_steps: int | None = None  # stop early (tests, smoke runs); schedules still span epochs
    time_budget_minutes: float | None = None  # stop after this much training time (equal-time comparisons)


@dataclass
class EvalConfig:
    knn_every: int = 0  # epochs; 0 disables kNN during pretraining
    knn_k: int = 20
    knn_t: float = 0.07
    knn_max_train: int | None = None  # cap the kNN bank during pretraining (speed)


@dataclass
class Config:
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = None  # a method's own dataclass, chosen by method.name
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def init_seed(self) -> int:
        """The seed weights are initialised from: ``model.init_seed``, else ``seed``."""
        return self.seed if self.model.init_seed is None else self.model.init_seed

    def validate(self) -> None:
        """Reject impossible values before any work; the message names the key."""
        checks = [
            ("train.batch_size", self.train.batch_size > 0, "must be positive"),
            ("train.epochs", self.train.epochs > 0, "must be positive"),
            ("train.accum_steps", self.train.accum_steps > 0, "must be positive"),
            ("train.batch_size", self.train.batch_size % max(self.train.accum_steps, 1) == 0,
             f"must be divisible by train.accum_steps={self.train.accum_steps}"),
            ("train.warmup_epochs", self.train.warmup_epochs >= 0, "must be >= 0"),
            ("train.momentum_teacher", 0 <= self.train.momentum_teacher <= 1, "must be in [0, 1]"),
            ("train.momentum_teacher_end", 0 <= self.train.momentum_teacher_end <= 1, "must be in [0, 1]"),
            ("train.freeze_last_layer", self.train.freeze_last_layer is None or self.train.freeze_last_layer >= 0,
             "must be >= 0 (or null: 1% of the run)"),
            ("train.ckpt_every_steps", self.train.ckpt_every_steps >= 0, "must be >= 0"),
            ("train.max_steps", self.train.max_steps is None or self.train.max_steps >= 1, "must be >= 1"),
            ("train.time_budget_minutes", self.train.time_budget_minutes is None or self.train.time_budget_minutes > 0,
             "must be positive"),
            ("eval.knn_every", self.eval.knn_every >= 0, "must be >= 0"),
            ("train.base_lr", self.train.base_lr > 0, "must be positive"),
            ("train.precision", self.train.precision in ("auto", "fp32", "bf16", "fp16"),
             "must be auto, fp32, bf16 or fp16"),
            ("train.clip_mode", self.train.clip_mode in ("norm", "per_param"), "must be norm or per_param"),
            ("train.keep_last", self.train.keep_last >= 1, "must be at least 1"),
            ("train.parallel", self.train.parallel in ("ddp", "fsdp"), "must be ddp or fsdp"),
            ("train.compile", not (self.train.compile and self.train.parallel == "fsdp"),
             "is not supported together with train.parallel=fsdp (compile or shard, not both)"),
            ("train.log_every", self.train.log_every >= 1, "must be at least 1"),
            ("data.subset_fraction", 0 < self.data.subset_fraction <= 1, "must be in (0, 1]"),
            ("data.on_corrupt", self.data.on_corrupt in ("fail", "skip"), "must be fail or skip"),
            ("data.num_workers", self.data.num_workers >= 0, "must be >= 0"),
            ("data.augment_on", self.data.augment_on in ("loader", "device"), "must be loader or device"),
            ("data.labels", self.data.labels in ("auto", "folders", "none"), "must be auto, folders or none"),
            ("aug.local_crops_number", self.aug.local_crops_number >= 0, "must be >= 0"),
            ("model.patch_size", self.model.patch_size > 0, "must be positive"),
            ("model.depth", self.model.depth is None or self.model.depth >= 1, "must be >= 1 (or null)"),
            ("model.drop_path_rate", 0 <= self.model.drop_path_rate < 1, "must be in [0, 1)"),
            ("train.clip_grad", self.train.clip_grad >= 0, "must be >= 0 (0: no clipping)"),
            ("eval.knn_k", self.eval.knn_k > 0, "must be positive"),
            ("device", self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:")
                                                                  and self.device[5:].isdigit()),
             "must be auto, cpu, cuda or cuda:N"),
        ]
        for key in ("data.img_size", "aug.global_crops_size", "aug.local_crops_size"):
            checks.append((key, _get(self, key) is None or _get(self, key) > 0, "must be positive (or null)"))
        for key in ("flip_p", "color_jitter_p", "grayscale_p", "solarize_p"):
            checks.append((f"aug.{key}", 0 <= getattr(self.aug, key) <= 1, "must be a probability in [0, 1]"))
        checks.append(("aug.blur_p", all(0 <= p <= 1 for p in self.aug.blur_p), "must be probabilities in [0, 1]"))
        for key in ("global_crops_scale", "local_crops_scale"):
            lo, hi = getattr(self.aug, key)
            checks.append((f"aug.{key}", 0 < lo <= hi <= 1, "must be [low, high] with 0 < low <= high <= 1"))
        from sslkd.data.registry import DATASETS  # late: data and models import torch
        from sslkd.models.backbone import BACKBONES
        checks += [("model.backbone", self.model.backbone in BACKBONES, f"must be one of {', '.join(BACKBONES)}"),
                   ("data.name", self.data.name in DATASETS, f"must be one of {', '.join(DATASETS)}")]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why} (got {_get(self, key)!r})")
        if self.model.backbone.startswith("vit"):
            for key in ("data.img_size", "aug.global_crops_size", "aug.local_crops_size"):
                size = _get(self, key)
                if size is not None and size % self.model.patch_size:
                    raise ConfigError(
                        f"{key}={size} is not divisible by model.patch_size={self.model.patch_size}"
                    )
        if self.method is not None and hasattr(self.method, "validate"):
            self.method.validate()


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting YAML lists to tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {tp}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with suggestions."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint} (valid: {', '.join(names)})")
        if cls is Config and key == "method":
            kwargs[key] = _method_from_dict(value)
        else:
            kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _method_from_dict(data: Any) -> Any:
    from sslkd.methods import method_config_class  # late: methods import models/losses

    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError("method: expected a mapping with a 'name' key (e.g. name: dino)")
    cls = method_config_class(data["name"])
    return from_dict(cls, data, "method")


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
        raise ConfigError(f"override '{text}': the value is not valid YAML "
                          f"({str(e).splitlines()[0]}); quote it or close its brackets") from e
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> Config:
    """Load a YAML config (or ``base``), apply overrides, type-check and validate it."""
    data: dict = copy.deepcopy(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = _merge(data, _read_yaml(path))
    data = apply_overrides(data, list(overrides or []))
    method = data.setdefault("method", {})
    if isinstance(method, dict):
        method.setdefault("name", "dino")  # the default method
    cfg = from_dict(Config, data)
    cfg.validate()
    return cfg


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config; ``_base_: other.yaml`` (relative to this file) is loaded first and
    overridden by this file's keys, so experiment variants stay a few lines long."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: _base_ cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = loaded.pop("_base_", None)
    if base is None:
        return loaded
    return _merge(_read_yaml(path.parent / base, seen + (path.resolve(),)), loaded)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
