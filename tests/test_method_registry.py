"""A method describes itself: the CLI's choices, a first run's defaults, its ViT and teacher needs
and its table label come from its class, so a method defined outside sslkd works everywhere."""

from dataclasses import dataclass

import pytest
import yaml

from sslkd.autoconfig import auto_config
from sslkd.cli import main
from sslkd.config import load_config
from sslkd.errors import ConfigError
from sslkd.experiments.compare import label_of, models_of
from sslkd.methods import DINO, METHODS, SEED, DINOConfig, MethodContext, build_method
from sslkd.methods.registry import register


@dataclass
class PatchDINOConfig(DINOConfig):
    name: str = "patch_dino"


class PatchDINO(DINO):
    """DINO that refuses CNNs and local crops, with its own first-run recipe and table label."""

    config_class = PatchDINOConfig
    needs_vit = "reads patch tokens"
    local_crops = False

    @classmethod
    def first_run(cls, epochs: int, model: dict) -> dict:
        return {"method": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}, "train": {"base_lr": 1e-4}}

    @classmethod
    def row_label(cls, method_cfg) -> str:
        return f"patch DINO ({method_cfg.out_dim})"


@pytest.fixture
def patch_dino():
    register("patch_dino")(PatchDINO)
    yield PatchDINO
    METHODS.pop("patch_dino")


def test_a_method_defined_outside_sslkd_gets_the_cli_and_first_run_defaults(patch_dino, tmp_path, capsys):
    cfg = auto_config("patch_dino", "digits", epochs=2)
    assert cfg["aug"]["local_crops_number"] == 0 and cfg["method"]["out_dim"] == 64
    assert cfg["train"]["base_lr"] == 1e-4
    with pytest.raises(ConfigError, match="patch_dino reads patch tokens and needs a ViT backbone, got 'resnet18'"):
        auto_config("patch_dino", "digits", model="resnet18")
    with pytest.raises(ConfigError, match="--teacher: patch_dino takes no teacher"):
        auto_config("patch_dino", "digits", teachers=["timm:resnet18"])
    out = tmp_path / "run"
    args = ["pretrain", "--method", "patch_dino", "--data", "digits", "--out", str(out), "--no-progress"]
    args += ["--set", "train.max_steps=2", "--set", "model.depth=1", "--set", "data.num_workers=0"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    shown = yaml.safe_load(printed[: printed.index("\n...\n")])
    assert shown["method"]["name"] == "patch_dino" and shown["method"]["out_dim"] == 64
    assert (out / "checkpoint-2.pt").is_file()
    run = load_config(str(out / "config.yaml"))
    assert label_of(run) == "patch DINO (64)" and models_of(run) == [(1, run.model.backbone)]


def test_the_vit_need_is_checked_where_the_backbone_is_built(patch_dino):
    cnn = load_config(None, ["method.name=patch_dino", "model.backbone=resnet18", "output_dir=/tmp/unused"])
    with pytest.raises(ConfigError, match="reads patch tokens and needs a ViT backbone"):
        build_method(cnn, 3, 32)
    method = build_method(load_config(None, ["method.name=patch_dino", "model.backbone=vit_tiny"]), 3, 32)
    assert isinstance(method.ctx, MethodContext) and method.ctx.method.name == "patch_dino"
    assert method.ctx.model.backbone == "vit_tiny"


def test_teacher_keys_come_from_the_method():
    assert SEED.teacher_overrides(["a"]) == {"teacher": "a"}
    assert METHODS["dmt"].teacher_overrides(["a", "b"]) == {"teachers": ["a", "b"]}
    with pytest.raises(ConfigError, match="SEED distils one teacher"):
        SEED.teacher_overrides(["a", "b"])
    with pytest.raises(ConfigError, match="--teacher A --teacher B"):
        METHODS["dmt"].teacher_overrides([])
    assert METHODS["dino"].teacher_overrides([]) == {}
