"""A first run without a YAML file: ``sslkd pretrain --method M --data DIR`` picks its config from
the images and the machine, prints it, and trains every method on a generated folder of photos."""

import os

import numpy as np
import pytest
import timm
import yaml
from PIL import Image
from safetensors.torch import save_file

from sslkd.autoconfig import auto_config
from sslkd.cli import main
from sslkd.config import config_path, load_config
from sslkd.errors import ConfigError
from sslkd.experiments.table1 import DEFAULT_CONFIGS


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """16 JPEGs of mixed sizes and aspect ratios (shorter side 40-64 px) in nested folders, no labels."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(16):
        w, h = int(rng.integers(40, 65)), int(rng.integers(40, 90))
        folder = root / f"album{i % 3}" / ("day1" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
    return root


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    paths = []
    for i in range(2):
        vit = timm.create_model("vit_tiny_patch16_224", img_size=48, patch_size=8, depth=1, num_classes=0)
        save_file(vit.state_dict(), str(root / f"t{i}.safetensors"))
        paths.append(str(root / f"t{i}.safetensors"))
    return paths


def test_defaults_follow_the_images_and_the_method(photos):
    cfg = auto_config("dino", str(photos))
    assert cfg["data"] == {
        "name": "imagefolder",
        "root": str(photos),
        "num_workers": max(0, min(8, os.cpu_count() - 1)),
    }
    assert cfg["model"]["backbone"] == "vit_tiny" and cfg["model"]["patch_size"] == 8
    assert cfg["aug"]["global_crops_size"] % 8 == 0 and 40 <= cfg["aug"]["global_crops_size"] <= 64
    assert cfg["train"]["batch_size"] == 8  # 16 images: at least two steps per epoch
    big = auto_config("ibot", "cifar10", img_size=224)
    assert (
        big["model"]["backbone"],
        big["model"]["patch_size"],
        big["aug"]["global_crops_size"],
        big["aug"]["local_crops_size"],
    ) == ("vit_small", 16, 224, 96)  # DINO/iBOT's recipe
    mokd = auto_config("mokd", "digits", epochs=20)
    assert mokd["method"]["model2"]["backbone"] == "resnet18"
    # MOKD's Suppl. A.1, not DINO's: ViT lr 3e-4, tau' 0.04 -> 0.07 over 30% of the run, no grayscale/solarize
    assert mokd["train"]["base_lr"] == 3e-4 and mokd["train"]["clip_mode"] == "per_param"
    assert mokd["method"]["warmup_teacher_temp_epochs"] == pytest.approx(6)
    assert (mokd["aug"]["grayscale_p"], mokd["aug"]["solarize_p"]) == (0.0, 0.0)
    m = load_config(None, ["output_dir=/tmp/unused"], base=mokd).method
    assert (m.warmup_teacher_temp, m.teacher_temp) == (0.04, 0.07)
    assert "base_lr" not in auto_config("dino", "digits")["train"]  # DINO keeps the general defaults
    with pytest.raises(ConfigError, match="--teacher"):
        auto_config("seed", "digits")
    with pytest.raises(ConfigError, match="mae encodes the visible patches and needs a ViT backbone"):
        auto_config("mae", "digits", model="resnet18")
    with pytest.raises(ConfigError, match="not a folder, nor hf:user/name, nor a dataset name"):
        auto_config("dino", "/no/such/folder")


@pytest.mark.parametrize("method", ["dino", "ibot", "mocov3", "mae", "mokd", "seed", "dmt"])
def test_every_method_runs_two_steps_without_a_yaml_file(method, photos, teachers, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--method",
        method,
        "--data",
        str(photos),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "train.max_steps=2",
        "--set",
        "model.depth=1",
        "--set",
        "data.num_workers=0",
    ]
    if method == "seed":
        args += ["--teacher", teachers[0]]
    if method == "dmt":
        args += ["--teacher", teachers[0], "--teacher", teachers[1]]
    if method in ("seed", "dmt"):
        args += ["--set", "method.teacher_arch=vit_tiny", "--set", "method.teacher_patch_size=8"]
    if method == "mokd":
        args += ["--set", "method.model2.depth=1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    shown = yaml.safe_load(printed[: printed.index("\n...\n")])  # the resolved config, one YAML document
    assert shown == yaml.safe_load((out / "config.yaml").read_text())
    assert shown["method"]["name"] == method and (out / "checkpoint-2.pt").is_file()
    assert load_config(str(out / "config.yaml")).train.max_steps == 2  # the saved config is an experiment


def test_config_flags_and_shipped_names_work_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outside the checkout: shipped configs by name
    for name in DEFAULT_CONFIGS:
        assert load_config(name).method.name == "ibot"
    assert config_path("configs/ibot/cifar10_vit_tiny_kd.yaml") == config_path("ibot/cifar10_vit_tiny_kd")
    with pytest.raises(ConfigError, match="did you mean ibot/cifar10_vit_tiny_kd"):
        config_path("ibot/cifar10_vit_tiny_kdd")
    assert main(["pretrain", "--config", "dino/cifar10_vit_tiny", "--method", "dino"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main(["pretrain", "--data", "digits"]) == 2
    assert "--method and --data" in capsys.readouterr().err


def test_explicit_flags_win_and_sizes_fit_the_patch(photos):
    assert auto_config("dino", str(photos), batch_size=64)["train"]["batch_size"] == 64  # not clamped
    cfg = auto_config("dino", "cifar10", img_size=100)
    assert cfg["data"]["img_size"] % cfg["model"]["patch_size"] == 0
    load_config(None, [], base=cfg)  # validates: the size is a whole number of patches
    with pytest.raises(ConfigError, match="SEED distils one teacher"):
        auto_config("seed", "digits", teachers=["a", "b"])


def test_teacher_flags_follow_the_configs_method(teachers, tmp_path, capsys):
    from sslkd.cli import build_parser
    from sslkd.commands.pretrain import resolve

    args = build_parser().parse_args(
        ["pretrain", "--config", "dmt/cifar10_vit_tiny_from_table1", "--teacher", teachers[0], "--teacher", teachers[1]]
    )
    assert resolve(args)[0].method.teachers == teachers
    args = build_parser().parse_args(["pretrain", "--config", "dino/cifar10_vit_tiny", "--teacher", teachers[0]])
    with pytest.raises(ConfigError, match="takes no teacher"):
        resolve(args)


@pytest.fixture
def big_photos(tmp_path):
    """Four 320 x 240 photos in two class folders."""
    for c in ("a", "b"):
        (tmp_path / "big" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (320, 240), (60 * i, 90, 30)).save(tmp_path / "big" / c / f"{i}.jpg")
    return tmp_path / "big"


def test_a_cpu_run_of_photos_fits_the_device_and_img_size_shrinks_every_path(big_photos, monkeypatch):
    """Issue 31, item 9: no GPU -> photos at 64 px with ViT-Tiny/8 (said); asking for the GPU
    recipe gets it; --img-size, --set data.img_size and --config --img-size all shrink the crops."""
    from sslkd.cli import build_parser
    from sslkd.commands.pretrain import resolve

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)

    def resolved(*argv):
        notes: list[str] = []
        cfg, _ = resolve(build_parser().parse_args(["pretrain", *argv]), notes)
        m, a = cfg.model, cfg.aug
        return (m.backbone, m.patch_size, a.global_crops_size, a.local_crops_size, cfg.data.img_size), notes

    got, notes = resolved("--method", "dino", "--data", str(big_photos))
    assert got == ("vit_tiny", 8, 64, 24, 64) and "no GPU" in notes[0]
    got, notes = resolved("--method", "dino", "--data", str(big_photos), "--img-size", "224", "--model", "vit_small")
    assert got == ("vit_small", 16, 224, 96, 224) and not notes
    assert (
        resolved("--method", "dino", "--data", str(big_photos), "--set", "data.img_size=32")[0]
        == resolved("--method", "dino", "--data", str(big_photos), "--img-size", "32")[0]
    )
    assert resolved("--method", "dino", "--data", str(big_photos), "--img-size", "32")[0][2] == 32
    got, notes = resolved("--config", "ibot/imagenet1k_vits16_kd", "--img-size", "64")
    assert got[:4] == ("vit_small", 16, 64, 32) and "crops 224/96 px -> 64/32 px" in notes[0]


def test_a_run_planned_past_hours_says_so_with_a_trial_that_fits(monkeypatch):
    """The estimate counts the backbones' FLOPs (checked against the ViT formula) over a measured
    device rate; a long plan prints the estimate and the same command with --minutes 60."""
    from sslkd import autoconfig, estimate

    n, d, depth = 8 * 8 + 1, 192, 12  # ViT-Tiny/4 at 32 px: 64 patches + CLS
    blocks = depth * (2 * n * 12 * d * d + 2 * 2 * n * n * d)  # qkv, proj, mlp; q.k and a.v
    embed = 2 * 64 * (4 * 4 * 3) * d
    assert estimate.forward_gflops("vit_tiny", 4, True, None, 32, 3) == pytest.approx((blocks + embed) / 1e9, rel=0.01)
    monkeypatch.setattr(estimate, "device_gflops", lambda device: 100.0)
    cfg = load_config(None, [], base=auto_config("dino", "cifar10"))  # 100 epochs of 50,000 images
    notes = autoconfig.long_run_notes(cfg, ["sslkd", "pretrain", "--method", "dino", "--data", "cifar10"])
    est = estimate.estimate(cfg, 50_000, 32, 3, "cpu")
    assert est.steps == 100 * (50_000 // cfg.train.batch_size) and est.hours > autoconfig.LONG_RUN_HOURS
    assert f"~{est.hours:,.0f} h here" in notes[0]
    assert notes[1].endswith("sslkd pretrain --method dino --data cifar10 --minutes 60")
    short = load_config(None, ["train.epochs=1", "data.subset_fraction=0.02"], base=auto_config("dino", "cifar10"))
    assert autoconfig.long_run_notes(short, ["sslkd"]) == []
    budgeted = load_config(None, ["train.time_budget_minutes=60"], base=auto_config("dino", "cifar10"))
    assert autoconfig.long_run_notes(budgeted, ["sslkd"]) == []
