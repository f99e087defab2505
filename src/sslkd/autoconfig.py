"""A run without a YAML file: sound defaults read from the data and the machine.

``sslkd pretrain --method dino --data ~/photos`` builds its config here: the image size from a
sample of the images (headers only), the crops, patch size and backbone from that size, the batch
size and loader processes from the machine and the number of images, and each method's own needs
(``needs_vit``, ``local_crops``, ``teacher_overrides`` and ``first_run`` of its class: a ViT for
iBOT/MAE/DMT, a second model for MOKD, teachers for SEED/DMT). The result is an
ordinary config mapping: ``--set`` overrides any key, and the run folder keeps the resolved
``config.yaml``, which ``--config`` takes as an experiment from then on.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import statistics
from pathlib import Path

import numpy as np
import torch

from sslkd.config import Config
from sslkd.data.folder import CorruptImageError, scan_folder
from sslkd.data.hf import header_sides, is_hf
from sslkd.data.hf_stream import stream_header_sides
from sslkd.data.imagefolder import header_sizes, split_root
from sslkd.data.registry import DATASETS, source_options
from sslkd.data.shards import is_shards, load_shards
from sslkd.device import resolve_device
from sslkd.errors import ConfigError, DatasetError
from sslkd.estimate import estimate
from sslkd.methods import method_class
from sslkd.models import BACKBONES, is_backbone

NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "fashion-mnist": 28, "imagenet32": 32, "digits": 16, "synthetic": 32}
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "fashion-mnist": 60_000, "imagenet32": 1_281_167, "digits": 1438}
CPU_PHOTO_SIZE = 64  # photos on a CPU: the images of the CIFAR recipes' cost per token, at 8 px patches
LONG_RUN_HOURS = 3.0  # a planned run longer than this on the device found is said, with a trial that fits
SAMPLE = 64  # image headers read to pick the size


def image_size_of(name: str, where: str, options=None) -> tuple[int, int]:
    """(median shorter side of up to ``SAMPLE`` evenly spaced training images, number of training
    images) of source ``name`` (imagefolder, shards, hf) at ``where`` (its ``data.root``), read
    with the source's ``options`` (``data.options``)."""
    root = Path(where).expanduser()
    if name == "hf":
        opts = source_options(name, options)
        read = stream_header_sides if opts is not None and opts.streaming else header_sides
        sides, count = read(where, opts, sample=SAMPLE)
    elif name == "shards":
        shards = load_shards(root)  # an interrupted packing: says so
        sides = []
        for i in np.linspace(0, len(shards) - 1, min(SAMPLE, len(shards))).astype(int):
            with contextlib.suppress(CorruptImageError):  # the loader meets it under data.on_corrupt
                sides.append(min(shards.header_size(int(i))))
        count = len(shards)
        shards.close()
    else:
        index = scan_folder(split_root(root, "train"), "none")
        sides, count = [min(size) for size in header_sizes(index.root, index.paths, SAMPLE)], len(index.paths)
    if not sides:
        raise ConfigError(f"--data {where}: none of the sampled images can be read")
    return int(statistics.median(sides)), count


def data_source(data: str) -> dict:
    """The ``data`` section ``--data`` names: a folder (of images, of shards, of a Hugging Face
    dataset), ``hf:user/name`` (a Hub dataset) or a dataset name from ``sslkd info``."""
    folder = Path(data).expanduser()
    if folder.is_dir():
        name = "hf" if is_hf(folder) else "shards" if is_shards(folder) else "imagefolder"
        return {"name": name, "root": str(folder)}
    if data.startswith("hf:"):
        return {"name": "hf", "root": data[3:]}
    if data in DATASETS:
        return {"name": data}
    raise ConfigError(f"--data {data}: not a folder, nor hf:user/name, nor a dataset name ({', '.join(DATASETS)})")


def auto_config(
    method: str,
    data: str,
    model: str | None = None,
    out: str | None = None,
    teachers: list[str] | None = None,
    img_size: int | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    notes: list[str] | None = None,
    data_options: dict | None = None,
) -> dict:
    """The config mapping of a first run of ``method`` on ``data`` (a folder of images, or a
    dataset name from ``sslkd info``); see the module doc. Arguments given win over the defaults;
    a choice made for the device found is explained in ``notes``; ``data_options``: the source's
    own options (``data.options``), for reading its images."""
    cls = method_class(method)
    data_cfg = data_source(data)
    if "root" in data_cfg:
        side, count = image_size_of(data_cfg["name"], data_cfg["root"], data_options)
        data_name = (
            Path(data_cfg["root"]).resolve().name if data_cfg["name"] != "hf" else data_cfg["root"].split("/")[-1]
        )
    else:
        side, count = NATIVE_SIZE.get(data, 32), TRAIN_IMAGES.get(data, 10_000)
        data_name = data
    gpu = torch.cuda.is_available()
    if not gpu and img_size is None and model is None and side >= 128:  # ViT-S/16 at 224 px: weeks here
        img_size = CPU_PHOTO_SIZE
        if notes is not None:
            notes.append(
                f"no GPU: photos trained at {CPU_PHOTO_SIZE} px with vit_tiny/8 (on a GPU: 224 px, vit_small/16; "
                f"--img-size 224 --model vit_small asks for those here)"
            )
    size = img_size or side
    photos = size >= 128
    model = model or ("vit_small" if photos else "vit_tiny")
    if not is_backbone(model):
        raise ConfigError(
            f"--model: unknown backbone '{model}': an alias ({', '.join(BACKBONES)}) or a timm "
            f"model name (sslkd info --models PATTERN)"
        )
    cls.check_backbone(model)
    patch = 16 if size >= 128 else 8 if size >= 48 else 4
    global_size = 224 if size >= 224 else max(2 * patch, size // patch * patch)
    local_size = max(patch, round(global_size * 3 / 7 / patch) * patch)  # DINO: 96 for 224
    batch = batch_size or min(64 if gpu or not photos else 32, max(2, 2 ** int(count // 2).bit_length() // 2))
    cfg: dict = {
        "name": f"{method}-{data_name}",
        "output_dir": out or f"runs/{method}_{data_name}",
        "data": {**data_cfg, "num_workers": max(0, min(8, (os.cpu_count() or 1) - 1))},
        "aug": {
            "global_crops_size": global_size,
            "local_crops_size": local_size,
            "local_crops_number": (6 if photos else 2) if cls.local_crops else 0,
        },
        "model": {"backbone": model, "patch_size": patch, "small_stem": not photos},
        "method": {"name": method},
        "train": {"epochs": epochs or 100, "batch_size": batch, "warmup_epochs": min(10, (epochs or 100) / 10)},
    }
    if img_size:  # resized to the patch grid (a ViT cuts images into whole patches)
        cfg["data"]["img_size"] = max(patch, img_size // patch * patch)
    cfg["method"].update(cls.teacher_overrides(list(teachers or [])))
    for section, values in cls.first_run(cfg["train"]["epochs"], cfg["model"]).items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def train_data(cfg: Config) -> tuple[int, int] | None:
    """(images, side) a run of ``cfg`` trains on, where known without loading them: ``side`` is the
    size the loader gives the images without ``data.img_size`` (a folder of photos read lazily and
    shards: 224; small images in memory: their own)."""
    d = cfg.data
    try:
        if d.name in ("imagefolder", "shards", "hf") and d.root:
            side, n = image_size_of(d.name, d.root, d.options)
            side = side if side < 128 and d.name in ("imagefolder", "hf") else 224
        elif d.name in TRAIN_IMAGES:
            n, side = TRAIN_IMAGES[d.name], NATIVE_SIZE[d.name]
        else:
            return None
    except (DatasetError, ConfigError):  # the run itself says what is wrong with the data
        return None
    return max(1, int(n * d.subset_fraction)), side


def long_run_notes(cfg: Config, trial: list[str]) -> list[str]:
    """Lines saying that ``cfg`` is planned for more than :data:`LONG_RUN_HOURS` on the device it
    runs on, with ``trial`` (the command line as typed) planned into an hour by ``--minutes 60``."""
    data = train_data(cfg)
    if cfg.train.time_budget_minutes or data is None:
        return []
    try:
        est = estimate(cfg, *data, 3, resolve_device(cfg.device))
    except Exception:  # noqa: BLE001 - advice only: a model the meta device cannot run must not stop the run
        return []
    est.hours /= int(os.environ.get("WORLD_SIZE", "1"))  # torchrun: the processes share the images
    if est.hours <= LONG_RUN_HOURS:
        return []
    budget = ["--minutes", "60"] if trial[1:2] == ["pretrain"] else ["--set", "train.time_budget_minutes=60"]
    return [
        f"this run is planned for {est.describe(cfg)}",
        f"a trial that ends in an hour, every schedule planned into it: {shlex.join([*trial, *budget])}",
    ]
