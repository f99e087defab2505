import pytest

from sslkd.config import Config, ConfigError, load_config, to_dict
from sslkd.methods import DINOConfig


def test_defaults_and_override_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "train:\n  epochs: 3\naug:\n  global_crops_scale: [0.3, 1.0]\nmethod:\n  name: dino\n  out_dim: 128\n"
    )
    cfg = load_config(path, ["train.batch_size=16", "method.teacher_temp=0.05", "data.root=/x"])
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 16
    assert cfg.aug.global_crops_scale == (0.3, 1.0)
    assert isinstance(cfg.method, DINOConfig) and cfg.method.out_dim == 128 and cfg.method.teacher_temp == 0.05
    assert cfg.data.root == "/x"
    # round trip through plain dicts (what checkpoints store)
    assert to_dict(load_config(None, base=to_dict(cfg))) == to_dict(cfg)


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*did you mean epochs"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"method.out_dims.*out_dim"):
        load_config(None, ["method.out_dims=3"])
    with pytest.raises(ConfigError, match="unknown method 'dinox'"):
        load_config(None, ["method.name=dinox"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.batch_size=-4", "train.batch_size"),
        ("train.batch_size=abc", "train.batch_size"),
        ("train.epochs=1.5", "train.epochs"),
        ("train.precision=fp8", "train.precision"),
        ("train.accum_steps=3", "train.batch_size"),
        ("train.momentum_teacher=1.5", "train.momentum_teacher"),
        ("data.img_size=30", "data.img_size"),  # not divisible by patch 4
        ("aug.global_crops_scale=[0.1]", "aug.global_crops_scale"),
        ("method.teacher_temp=0", "method.teacher_temp"),
        ("train.parallel=zero3", "train.parallel"),
        ("method.name=[a]", "method.name"),  # a list: once a TypeError
        ("device=gpu", "device"),  # once a RuntimeError from torch
        ("model.depth=0", "model.depth"),  # once a ViT without blocks
        ("train.clip_grad=-1", "train.clip_grad"),
        ("aug.global_crops_scale=[1.0,0.4]", "aug.global_crops_scale"),  # once torchvision's uniform_ error
        ("data.img_size=-16", "data.img_size"),
        ("aug.flip_p=2", "aug.flip_p"),
        ("model.backbone=vit_tinny", "model.backbone"),  # once a plain error at model building, exit 1
        ("data.name=cifar11", "data.name"),
        ("data.img_size=[1,2", "data.img_size=\\[1,2"),  # broken YAML: once a parser traceback
    ],
)
def test_impossible_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_compile_and_fsdp_are_not_combined():
    with pytest.raises(ConfigError, match=r"train\.compile.*fsdp"):
        load_config(None, ["train.compile=true", "train.parallel=fsdp"])


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        assert isinstance(load_config(path), Config)
