"""The Python API, for notebooks: the same code path as the CLI (which calls these functions).

    import sslkd
    run = sslkd.pretrain("dino/fashion_mnist_vit_tiny", output_dir="runs/nb", train__epochs=2)
    print(sslkd.evaluate(run, "digits", protocol="knn")["top1"])
    model = sslkd.load_backbone(run)            # the timm model: model(x) -> features [B, D]

Config keys are keyword arguments: a top-level key (``output_dir="runs/x"``), a dotted key with
``__`` for the dot (``train__epochs=2``), or a section mapping (``train={"epochs": 2}``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslkd.config import Config, load_config, to_dict
from sslkd.data.registry import labelled_splits
from sslkd.device import resolve_device
from sslkd.errors import TeacherError
from sslkd.eval import evaluate as evaluate_all
from sslkd.eval import options_of
from sslkd.export import load_export, timm_module
from sslkd.models import build_backbone
from sslkd.pretrained import load_pretrained
from sslkd.train import Trainer
from sslkd.weights import resolve


@dataclass
class Run:
    """A pretraining run: its folder, resolved config and the summary ``fit`` returned."""

    path: Path
    config: Config
    summary: dict

    def backbone(self, which: str = "teacher", model: int = 1) -> nn.Module:
        """The run's backbone as a plain timm model (see :func:`load_backbone`)."""
        return load_backbone(self.path, which, model)


def config(
    source: str | Path | Config | dict | None = None, overrides: list[str] | None = None, **values: Any
) -> Config:
    """A validated :class:`Config` from a YAML path, a config, a mapping or nothing (defaults),
    with keyword values (``train__epochs=2``, ``train={"epochs": 2}``) and ``key=value`` strings."""
    nested: dict = {}
    for key, value in values.items():
        node, parts = nested, key.replace("__", ".").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    if isinstance(source, Config):
        return load_config(None, overrides, base=to_dict(source), values=nested)
    if isinstance(source, dict):
        return load_config(None, overrides, base=source, values=nested)
    return load_config(source, overrides, values=nested)


def pretrain(
    source: str | Path | Config | dict | None = None,
    *,
    overrides: list[str] | None = None,
    resume: str | None = "auto",
    progress: bool = True,
    datasets: tuple | None = None,
    **values: Any,
) -> Run:
    """Pretrain (or resume: ``resume="auto"`` continues a run found in ``output_dir``) the config
    :func:`config` builds from the arguments; under ``torchrun`` every process calls this.
    ``datasets``: ``(train, test)`` already loaded (``test`` for the training monitor, or None)
    instead of the config's ``data``."""
    cfg = config(source, overrides, **values)
    train, test = datasets if datasets is not None else (None, None)
    trainer = Trainer(cfg, train, test, progress=progress)  # joins torchrun's process group, if any
    summary = trainer.fit(resume=None if resume in (None, "none") else resume)
    return Run(Path(cfg.output_dir), cfg, summary)


def load_backbone(source: str | Path | Run, which: str = "teacher", model: int = 1) -> nn.Module:
    """A plain timm model whose ``forward`` gives the features sslkd evaluates (the ViT's CLS
    token after the final norm, a CNN's average-pooled map), from a run folder, a checkpoint or
    an ``sslkd export`` folder (``model.safetensors`` + ``config.json``)."""
    src = resolve(source.path if isinstance(source, Run) else source, "backbone")
    if src.kind == "export":
        return load_export(src.path)
    if src.kind != "sslkd":
        raise TeacherError(f"{src.spec}: load_backbone reads sslkd runs, checkpoints and export folders ({src.kind})")
    return timm_module(load_pretrained(src.path, which, model).backbone).eval()


def eval_datasets(dataset: str, root: str | None = None, img_size: int | None = None, **options) -> tuple:
    """``(train, test)`` of a labelled dataset: its training split and its held-out split
    labelled by the training classes; a dataset without labels is an error. ``options``: data keys
    (``on_corrupt``, ``max_pixels``, ``labels``, ``in_memory``, ``download``, a source's ``options``)."""
    return labelled_splits(dataset, root=root, img_size=img_size, **options)


def evaluate(
    source: str | Path | Run | nn.Module,
    dataset: str | tuple | None = None,
    protocol: str = "knn",
    *,
    root: str | None = None,
    which: str = "teacher",
    model: int = 1,
    img_size: int | None = None,
    device: str = "auto",
    batch_size: int = 256,
    workers: int = 0,
    seed: int = 0,
    progress: bool = False,
    data: dict | None = None,
    **options: Any,
) -> dict:
    """Accuracy (%) of a backbone on ``dataset``'s held-out split, learnt from its training split
    (``dataset``: a name, with ``root`` for folders and ``data`` for its data keys, or a
    ``(train, test)`` pair of datasets; for a run, by default the run's own dataset, read with the
    run's ``data.options``, those ``data`` gives replacing theirs).

    ``source``: a run folder or checkpoint (its ``which`` weights, ``model`` 2 for MOKD's second
    model), a :class:`Run`, or a backbone (``nn.Module`` mapping images to features; normalised
    with the dataset's statistics). ``protocol``: one of :data:`sslkd.eval.PROTOCOLS` (``knn``,
    ``linear``, ``logreg``, ``finetune``); ``options``: its options as keywords (``k=[10, 20]``,
    ``temperature``; ``epochs``, ``lr``; ``C``; ``label_fraction``, ...: ``sslkd eval <protocol>
    --help`` lists them with their defaults). Fine-tuning trains a copy. Returns ``{"top1", "top5",
    "protocol", "source", "dataset", "train_images", "test_images", ...}``."""
    opts = options_of(protocol, {k: v for k, v in options.items() if v is not None})  # first: a typo costs nothing
    dev = resolve_device(device)
    pre = None if isinstance(source, nn.Module) else load_pretrained(getattr(source, "path", source), which, model)
    if dataset is None:
        if pre is None:
            raise ValueError("evaluate(backbone, dataset): name the dataset to evaluate a backbone on")
        dataset, root = pre.config.data.name, root or pre.config.data.root
    data = dict(data or {})
    own = pre.config.data.options if pre is not None and dataset == pre.config.data.name else None
    if own is not None:  # the source's own options (hf's columns, splits, streaming), key by key under data's
        given = data.get("options") or {}
        as_dict = [asdict(o) if is_dataclass(o) else dict(o) for o in (own, given)]
        data["options"] = {**as_dict[0], **as_dict[1]}
    train, test = dataset if isinstance(dataset, tuple) else eval_datasets(dataset, root, img_size, **data)
    dataset = train.name if isinstance(dataset, tuple) else dataset
    if pre is None:
        backbone, mean, std, size, label = source, train.mean, train.std, img_size or train.img_size, "a backbone"
    else:
        if pre.num_channels != train.num_channels:
            raise ValueError(
                f"{pre.path} was trained on {pre.num_channels}-channel images but "
                f"{dataset} has {train.num_channels} channels"
            )
        backbone, mean, std, size, label = (
            pre.backbone,
            pre.mean,
            pre.std,
            _eval_size(pre, train, img_size),
            str(pre.path),
        )
    res = evaluate_all(
        backbone.to(dev), train, test, {protocol: opts}, mean=mean, std=std, size=size, device=dev, seed=seed,
        batch_size=batch_size, num_workers=workers, progress=progress,
    )  # fmt: skip
    head = {"protocol": protocol, "source": label, "dataset": dataset}
    return {**head, **res[protocol], "train_images": res["train_images"], "test_images": res["test_images"]}


def _eval_size(pre, train, img_size: int | None) -> int:
    """The image size a pretrained backbone is evaluated at: ``img_size`` or its training size (a
    CNN keeps the data's); a ViT's must be a multiple of its patch."""
    size = img_size or pre.img_size
    if not pre.backbone.is_vit and train.img_size != size:
        return train.img_size  # CNNs take any size; keep the data's
    if pre.backbone.is_vit and size % pre.backbone.patch_size:
        raise ValueError(
            f"image size {size} (img_size, --img-size) is not a multiple of the ViT's patch size "
            f"{pre.backbone.patch_size}"
        )
    return size


def random_backbone(backbone: str, img_size: int, patch_size: int, in_chans: int, seed: int = 0) -> nn.Module:
    """A randomly initialised backbone (``seed``), the baseline every protocol is read against."""
    torch.manual_seed(seed)
    return build_backbone(backbone, img_size, patch_size, in_chans)


def summary_line(summary: dict) -> str:
    """The one JSON line ``sslkd pretrain`` prints at the end of a run."""
    return json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)})


__all__ = ["Run", "config", "eval_datasets", "evaluate", "load_backbone", "pretrain", "summary_line"]
