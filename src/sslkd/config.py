"""The experiment configuration: typed dataclass sections loaded from YAML, with ``key=value``
overrides.

A config file mirrors :class:`Config`. Unknown keys, wrong types and impossible values raise
:class:`ConfigError` naming the key (and the closest valid keys) before any work starts: the
field types say what each key accepts (:mod:`sslkd.schema`); ``validate()`` methods hold the
rules that tie several keys together. The ``method`` section is typed by the method it names
(``method.name``, see :mod:`sslkd.methods`); ``model`` is :class:`sslkd.models.ModelConfig`.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from sslkd.data.registry import DATASETS, OPTIONS
from sslkd.errors import ConfigError
from sslkd.methods import method_config_class
from sslkd.models import ModelConfig, is_vit
from sslkd.schema import (
    Fraction,
    NonNegative,
    NonNegativeFloat,
    Positive,
    PositiveFloat,
    Probability,
    Range,
    apply_overrides,
    check,
    from_dict,
    parse_override,
    to_dict,
)

__all__ = [
    "AugConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "parse_override",
    "to_dict",
]

Scale = tuple[Fraction, Fraction]
LoggerName = Literal["tensorboard", "wandb", "mlflow"]  # sslkd.train.loggers.LOGGERS


def _source_options(_options: Any, data: dict) -> type:
    name = data.get("name", DataConfig.name)
    if name not in OPTIONS:
        raise ConfigError(f"data.options: dataset '{name}' takes no options (those that do: {', '.join(OPTIONS)})")
    return OPTIONS[name]


@dataclass
class DataConfig:
    name: str = "digits"  # a dataset (sslkd info lists them); imagefolder: any folder; shards: sslkd data pack's
    root: str | None = None  # the data's folder (imagefolder, shards: sslkd data pack's, hf) or a Hub id (hf)
    download: bool = False  # fetch the dataset when it is not under root (needs a network)
    img_size: Positive | None = None  # resize images to this size; None keeps the dataset's size
    subset_fraction: Fraction = 1.0  # train on this share of the images (class-balanced)
    num_workers: NonNegative = 0  # loader processes (0: in the training process)
    on_corrupt: Literal["fail", "skip"] = "fail"  # undecodable file: fail (stop, naming it) | skip (replace, count)
    max_pixels: Positive = 800_000_000  # an image declaring more pixels is a corrupt file (a decompression bomb)
    in_memory: bool | None = None  # imagefolder, hf: decode all images into memory (None: when small and one size)
    labels: Literal["auto", "folders", "none"] = "auto"  # class folders: auto (when unambiguous) | folders | none
    augment_on: Literal["loader", "device"] = "loader"  # loader: per image in workers | device: batched on the device
    options: Any = field(default=None, metadata={"type_of": _source_options})  # the source's own section (hf)


@dataclass
class AugConfig:
    global_crops_size: Positive | None = None  # None: the image size
    global_crops_scale: Scale = (0.4, 1.0)  # area share range of the two global crops
    local_crops_number: NonNegative = 0  # small crops per image (multi-crop)
    local_crops_size: Positive | None = None  # None: about 3/7 of the image size (96/224 in DINO)
    local_crops_scale: Scale = (0.05, 0.4)  # area share range of the local crops
    flip_p: Probability = 0.5  # horizontal flip
    color_jitter_p: Probability = 0.8  # brightness/contrast/saturation/hue jitter, applied with this probability
    brightness: NonNegativeFloat = 0.4  # brightness jitter strength (torchvision's ColorJitter)
    contrast: NonNegativeFloat = 0.4  # contrast jitter strength
    saturation: NonNegativeFloat = 0.2  # saturation jitter strength
    hue: Annotated[float, Range(ge=0, le=0.5)] = 0.1  # hue jitter strength (a share of the colour circle)
    grayscale_p: Probability = 0.2  # random grayscale
    blur_p: tuple[Probability, Probability, Probability] = (1.0, 0.1, 0.5)  # global 1, global 2, locals
    solarize_p: Probability = 0.2  # second global crop only, as in DINO/BYOL
    paired: bool = False  # one crop, plain + colour-jittered (DMT: teachers see it plain)


@dataclass
class TrainConfig:
    epochs: Positive = 100  # length of the run; every schedule spans it
    batch_size: Positive = 64  # images per optimiser step, over all processes
    accum_steps: Positive = 1  # micro-batches per optimiser step (gradient accumulation)
    base_lr: PositiveFloat = 5e-4  # scaled by batch_size / 256 (batch_size is per optimiser step)
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: momentum 0.9 (SEED's ResNets); MOKD: method.optimizer1/2
    min_lr: NonNegativeFloat = 1e-6  # the cosine schedule's end
    warmup_epochs: NonNegativeFloat = 10  # may be fractional (short budgets)
    weight_decay: NonNegativeFloat = 0.04  # cosine from this ...
    weight_decay_end: NonNegativeFloat = 0.4  # ... to this (DINO/iBOT)
    momentum_teacher: Probability = 0.996  # EMA momentum, cosine from this ...
    momentum_teacher_end: Probability = 1.0  # ... to this
    clip_grad: NonNegativeFloat = 3.0  # 0 disables
    clip_mode: Literal["norm", "per_param"] = "norm"  # "norm": global norm; "per_param": per tensor, as iBOT's code
    # epochs during which the head's last layer is not updated (None: the first 1% of the run, what
    # DINO/iBOT's 1 of 100-800 epochs means; a freeze covering the whole run is refused)
    freeze_last_layer: NonNegativeFloat | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where the hardware has it, else fp32
    tune_malloc: bool = True  # CPU runs: glibc malloc keeps freed memory (sslkd.device.tune_cpu_malloc)
    compile: bool = False  # torch.compile each backbone and head (first steps pay the compilation)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # several processes: ddp (replicated) | fsdp (sharded)
    ckpt_every_steps: NonNegative = 0  # 0: at the end of every epoch only
    keep_last: Positive = 3  # checkpoints kept in the run folder
    log_every: Positive = 10  # steps between log lines / metrics records
    max_steps: Positive | None = None  # stop early (tests, smoke runs); schedules still span epochs
    loggers: list[LoggerName] = field(default_factory=lambda: ["tensorboard"])  # besides metrics.jsonl; sslkd[loggers]
    # a time budget: the step rate is measured over the first steps and every schedule planned to end
    # after this much training time (train.epochs stays an upper bound); plan.json records the plan
    time_budget_minutes: PositiveFloat | None = None


@dataclass
class EvalConfig:
    knn_every: NonNegative = 0  # epochs; 0 disables the monitor (eval.protocols) during pretraining
    knn_k: Positive = 20  # neighbours of the kNN monitor
    knn_t: PositiveFloat = 0.07  # temperature of the kNN vote
    knn_max_train: Positive | None = None  # cap the kNN bank during pretraining (speed)
    protocols: tuple[str, ...] = ("knn",)  # the monitor's protocols (knn, linear, logreg): <name>_top1/_top5


def _method_class(data: Any, _config: dict) -> type:
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError("method: expected a mapping with a 'name' key (e.g. name: dino)")
    return method_config_class(data["name"])


@dataclass
class Config:
    name: str = "run"  # the run's name (tables, plots, reports)
    output_dir: str = "runs/run"  # checkpoints, logs, metrics; a run there is resumed
    seed: int = 0  # data order, crops, masks (and weights, unless model.init_seed)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = field(default=None, metadata={"type_of": _method_class})  # a method's own dataclass
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def init_seed(self) -> int:
        """The seed weights are initialised from: ``model.init_seed``, else ``seed``."""
        return self.seed if self.model.init_seed is None else self.model.init_seed

    def validate(self) -> None:
        """Reject impossible values before any work; the message names the key. Field types are
        re-checked (a config edited in code); the rules below tie several keys together."""
        check(self)
        rules = [
            (
                "train.batch_size",
                self.train.batch_size % self.train.accum_steps == 0,
                f"must be divisible by train.accum_steps={self.train.accum_steps}",
            ),
            (
                "train.compile",
                not (self.train.compile and self.train.parallel == "fsdp"),
                "is not supported together with train.parallel=fsdp (compile or shard, not both)",
            ),
            (
                "aug.global_crops_scale",
                self.aug.global_crops_scale[0] <= self.aug.global_crops_scale[1],
                "must be [low, high] with low <= high",
            ),
            (
                "aug.local_crops_scale",
                self.aug.local_crops_scale[0] <= self.aug.local_crops_scale[1],
                "must be [low, high] with low <= high",
            ),
            (
                "device",
                self.device in ("auto", "cpu", "cuda")
                or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
                "must be auto, cpu, cuda or cuda:N",
            ),
            ("data.name", self.data.name in DATASETS, f"must be one of {', '.join(DATASETS)}"),
            (
                "data.options",
                self.data.options is None or isinstance(self.data.options, OPTIONS.get(self.data.name, ())),
                f"does not belong to data.name={self.data.name}",
            ),
        ]
        for key, ok, why in rules:
            if not ok:
                raise ConfigError(f"{key}: {why} (got {_get(self, key)!r})")
        self.model.validate()
        if is_vit(self.model.backbone):
            for key in ("data.img_size", "aug.global_crops_size", "aug.local_crops_size"):
                size = _get(self, key)
                if size is not None and size % self.model.patch_size:
                    raise ConfigError(f"{key}={size} is not divisible by model.patch_size={self.model.patch_size}")
        if self.method is not None and hasattr(self.method, "validate"):
            self.method.validate()


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


CONFIGS = Path(__file__).parent / "configs"  # shipped with the package (the checkout's configs/ links here)


def stored_config(stored: dict) -> dict:
    """A config mapping read from a checkpoint, with the keys it predates set to the behaviour it
    was trained with: a method config class's ``legacy_defaults`` (keys whose default changed what
    a run does) fill in only where the stored mapping lacks them, so that evaluating an old run
    rebuilds the network it trained and resuming it with today's defaults is refused by name."""
    out = copy.deepcopy(stored)
    method = out.get("method") or {}
    try:
        legacy = getattr(method_config_class(method.get("name", "dino")), "legacy_defaults", {})
    except ConfigError:
        return out

    def fill(section: dict, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                fill(section.setdefault(key, {}), value)
            else:
                section.setdefault(key, value)

    fill(method, legacy)
    return out


def config_path(spec: str | Path) -> Path:
    """A config file: ``spec`` as a path, else a shipped config by name (``ibot/cifar10_vit_tiny_kd``,
    with or without ``configs/`` and ``.yaml``), so that the names work from any folder and from an
    installed wheel. An unknown name is an error listing the closest shipped ones."""
    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec).removeprefix("configs/").removesuffix(".yaml")
    shipped = CONFIGS / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml"))
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f" (shipped: {', '.join(names[:6])}, ...)"
    raise ConfigError(f"config file not found: {spec}, and no shipped config of that name{hint}")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict | None = None,
    values: dict | None = None,
) -> Config:
    """Load a YAML config (over ``base``), then apply ``values`` (a nested mapping, e.g. from the
    Python API) and ``key=value`` ``overrides``; type-check and validate it."""
    data: dict = copy.deepcopy(base or {})
    if path is not None:
        data = _merge(data, read_yaml(config_path(path)))
    data = _merge(data, copy.deepcopy(values or {}))
    data = apply_overrides(data, list(overrides or []))
    method = data.setdefault("method", {})
    if isinstance(method, dict):
        method.setdefault("name", "dino")  # the default method
    cfg = from_dict(Config, data)
    cfg.validate()
    return cfg


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
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
    return _merge(read_yaml(path.parent / base, seen + (path.resolve(),)), loaded)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
