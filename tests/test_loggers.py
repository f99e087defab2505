"""W&B and MLflow, offline: the same scalars as metrics.jsonl, the config, and the run's files
(config, metrics, curves PNG) at the end; a resumed run continues the same W&B / MLflow run."""

import json

import pytest

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.errors import ConfigError
from sslkd.train import Trainer

TINY = {
    "device": "cpu",
    "data": {"name": "synthetic", "img_size": 16},
    "model": {"backbone": "vit_tiny", "patch_size": 4, "depth": 1},
    "method": {"name": "dino", "out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16},
    "train": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "log_every": 1, "loggers": ["wandb", "mlflow"]},
}


def test_wandb_and_mlflow_offline_get_metrics_config_and_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    out = tmp_path / "run"
    cfg = load_config(None, [f"output_dir={out}", "train.max_steps=2"], base=TINY)
    Trainer(cfg, data, progress=False).fit()
    cfg = load_config(None, [f"output_dir={out}", "train.max_steps=3"], base=TINY)
    Trainer(cfg, data, progress=False).fit(resume="auto")  # the same W&B and MLflow runs go on
    losses = {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}

    import mlflow

    mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
    run = mlflow.get_run((out / "mlflow_run_id").read_text())
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train.loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses)  # every step, both sessions
    assert run.data.params["method.out_dim"] == "32" and run.data.params["train.max_steps"] == "2"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.jsonl", "curves.png"} <= artifacts

    assert (
        main(
            [
                "report",
                str(out),
                "--out",
                str(tmp_path / "r.html"),
                "--eval-train-samples",
                "32",
                "--eval-test-samples",
                "16",
                "--linear-epochs",
                "2",
            ]
        )
        == 0
    )  # the report joins both runs
    assert "report.html" not in artifacts and "r.html" in {
        a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)
    }
    runs = sorted((out / "wandb").glob("offline-run-*"))  # one folder per session, one run id: wandb sync joins them
    assert len(runs) == 3 and {r.name.rsplit("-", 1)[1] for r in runs} == {(out / "wandb_id").read_text()}
    files = {p.name for p in (runs[-2] / "files").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "curves.png"} <= files and (runs[-1] / "files" / "r.html").is_file()
    assert "out_dim: 32" in (runs[-2] / "files" / "config.yaml").read_text()
    for r in runs[:2]:  # each session's offline log holds its steps' scalars and the config
        log = next(r.glob("*.wandb")).read_bytes()
        assert b"train/loss" in log and b"train/teacher_entropy" in log and b"out_dim" in log


def test_an_unknown_logger_names_the_choices():
    with pytest.raises(ConfigError, match=r"train\.loggers\[0\]: must be one of tensorboard, wandb, mlflow"):
        load_config(None, ["train.loggers=[comet]"], base=TINY)


def test_a_run_that_fails_at_once_reports_its_own_error(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from sslkd.errors import TrainingError

    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    cfg = load_config(None, [f"output_dir={tmp_path}", "train.loggers=[mlflow]"], base=TINY)
    tr = Trainer(cfg, data, progress=False)
    forward = tr.method.forward

    def nan_loss(*args, **kwargs):
        losses, metrics = forward(*args, **kwargs)
        return {**losses, "loss": losses["loss"] * float("nan")}, metrics

    tr.method.forward = nan_loss
    with pytest.raises(TrainingError, match="non-finite"):  # not the loggers' missing curves
        tr.fit()
