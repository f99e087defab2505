"""The Python API: pretrain, evaluate and load a backbone in a few lines, on the same code path as
the CLI (whose pretrain and eval commands call it)."""

import pytest
import torch

import sslkd
from sslkd.cli import main
from sslkd.data import get_dataset
from sslkd.errors import ConfigError
from sslkd.pretrained import load_pretrained

SMALL = {
    "device": "cpu",
    "data": {"name": "digits", "img_size": 16},
    "model": {"backbone": "vit_tiny", "patch_size": 4, "depth": 1},
    "method": {"name": "dino", "out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32},
    "train": {"epochs": 1, "batch_size": 64},
}


def test_pretrain_evaluate_and_load_a_backbone(tmp_path, capsys):
    run = sslkd.pretrain(SMALL, output_dir=str(tmp_path / "run"), train__max_steps=3, progress=False)
    assert run.summary["step"] == 3 and run.config.train.max_steps == 3
    assert (run.path / "checkpoint-3.pt").is_file()

    knn = sslkd.evaluate(run, "digits", protocol="knn", k=[5, 20])
    assert 10 < knn["top1"] <= 100 and knn["k"] in (5, 20) and set(knn["per_k"]) == {"5", "20"}
    assert knn["test_images"] == len(get_dataset("digits", "test")) and knn["train_images"] > 1000
    assert sslkd.evaluate(run.path, "digits", protocol="knn", k=[5, 20])["top1"] == knn["top1"]  # a path: the same

    model = sslkd.load_backbone(run)  # a plain timm model, sslkd's features from forward()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), load_pretrained(run.path).backbone(x), atol=1e-5)
    assert type(model).__module__.startswith("timm.")
    # a backbone is a source too, normalised with the dataset's statistics
    assert sslkd.evaluate(model, "digits", protocol="knn", k=[5, 20])["top1"] == pytest.approx(knn["top1"], abs=1.5)

    # an exported folder loads back to the same model
    assert main(["export", str(run.path), "--out", str(tmp_path / "exp")]) == 0
    with torch.no_grad():
        assert torch.allclose(sslkd.load_backbone(tmp_path / "exp")(x), model(x), atol=1e-5)

    # the CLI's eval prints what the API returns
    capsys.readouterr()
    assert main(["eval", "knn", "--checkpoint", str(run.path), "--dataset", "digits", "--k", "5,20", "--json"]) == 0
    assert f'"top1": {knn["top1"]}' in capsys.readouterr().out

    # calling again resumes the finished run instead of starting over
    again = sslkd.pretrain(SMALL, output_dir=str(run.path), train={"max_steps": 3}, progress=False)
    assert again.summary["step"] == 3


def test_keyword_config_values_are_checked_like_the_cli():
    cfg = sslkd.api.config(SMALL, train__epochs=3, model={"depth": 2}, overrides=["train.batch_size=32"])
    assert (cfg.train.epochs, cfg.model.depth, cfg.train.batch_size, cfg.model.patch_size) == (3, 2, 32, 4)
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        sslkd.api.config(SMALL, train__epochs=0)
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch'"):
        sslkd.api.config(SMALL, train__epoch=3)
    with pytest.raises(ValueError, match="unknown protocol 'svm'"):
        sslkd.evaluate(torch.nn.Identity(), "digits", protocol="svm")
