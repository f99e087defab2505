"""Each paper's own ImageNet-1k setting (configs/*/imagenet1k_*.yaml): validates, cites its source,
and trains 2 steps at 224 px on a generated ImageNet-layout tree of mixed-size JPEGs."""

import json
import math
from importlib import resources
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from test_shards import make_imagenet

from sslkd.config import config_path, load_config
from sslkd.train import Trainer
from sslkd.train.inputs import load_datasets

CONFIGS = sorted(
    f"{p.parent.name}/{p.stem}" for p in Path(str(resources.files("sslkd") / "configs")).glob("*/imagenet1k_*.yaml")
)


def test_every_paper_has_its_imagenet_setting():
    methods = {name.split("/")[0] for name in CONFIGS}
    assert methods == {"ibot", "seed", "mokd", "dmt", "mocov3", "mae"}
    assert {"ibot/imagenet1k_vits16_rkd_d", "ibot/imagenet1k_vits16_rkd_a"} <= set(CONFIGS)
    assert sum(name.startswith("seed/") for name in CONFIGS) == 3  # ResNet-18, EfficientNet-B0, MobileNetV3
    for name in CONFIGS:
        cfg = load_config(config_path(name), [])
        text = config_path(name).read_text()
        assert "Sec." in text or "Table" in text, f"{name} cites no table or section"
        assert cfg.aug.global_crops_size == 224 and cfg.model.small_stem is False, name
        assert (cfg.data.name, cfg.data.root) == ("imagefolder", "data/imagenet"), name


@pytest.fixture(scope="module")
def tree_and_teachers(tmp_path_factory):
    root = make_imagenet(tmp_path_factory.mktemp("imagenet"), classes=2, per_class=3, val_per_class=1)
    files = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    r50 = timm.create_model("resnet50", num_classes=0).state_dict()
    mlp = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 128))
    r50.update({f"fc.{k}": v for k, v in mlp.state_dict().items()})  # MoCo v2's projection MLP
    moco = {f"module.encoder_{e}.{k}": v for e in "qk" for k, v in r50.items()}
    torch.save({"state_dict": moco, "epoch": 200}, files / "moco_v2_200ep_pretrain.pth.tar")
    save_file(timm.create_model("vit_base_patch16_224", num_classes=0).state_dict(), str(files / "vitb16.safetensors"))
    return root, files


def _teachers(name: str, files: Path) -> list[str]:
    if name.startswith("seed/"):
        return [f"method.teacher={files / 'moco_v2_200ep_pretrain.pth.tar'}"]
    if name.startswith("dmt/"):  # one random ViT-B/16 file stands for the three teachers' runs
        vitb = files / "vitb16.safetensors"
        return [f"method.teachers=[{vitb},{vitb},{vitb}]", "method.teacher_arch=vit_base"]
    return []


@pytest.mark.filterwarnings("ignore:train.freeze_last_layer")  # 1 epoch of 2 steps: frozen throughout
@pytest.mark.parametrize("name", CONFIGS)
def test_paper_config_trains_two_steps_at_224(name, tree_and_teachers, tmp_path):
    root, files = tree_and_teachers
    overrides = [
        f"data.root={root}",
        "data.num_workers=0",
        "train.batch_size=3",  # RKD-A relates triplets
        "train.max_steps=2",
        f"output_dir={tmp_path / 'run'}",
        *_teachers(name, files),
    ]
    cfg = load_config(config_path(name), overrides)
    train, _ = load_datasets(cfg)
    assert getattr(train, "lazy", False) and len(train) == 6  # photos read from files, at their own sizes
    trainer = Trainer(cfg, train, progress=False)
    assert trainer.steps_per_epoch == 2
    # no checkpoint: ViT-B / two-model states are GBs a config (checkpointing is tested elsewhere)
    trainer.save = lambda: tmp_path / "run" / "not-written.pt"
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
