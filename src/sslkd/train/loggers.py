"""Where a run's numbers go besides ``metrics.jsonl``: TensorBoard (default), Weights & Biases and
MLflow (``train.loggers``; ``pip install "sslkd[loggers]"``). Each gets the same scalars, the config
at the start and, at the end, the run's files (config.yaml, env.json, metrics.jsonl, the curves PNG);
``sslkd report`` adds its HTML page to the same runs (:func:`attach`).

Offline by default and resumable: W&B runs in ``WANDB_MODE`` (``offline`` unless set; ``wandb sync``
uploads later) with its run id kept in the run folder, MLflow logs to ``MLFLOW_TRACKING_URI``
(a file store ``<run>/mlruns`` unless set), its run id kept too, so a resumed run continues the same run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import warnings
from pathlib import Path

from sslkd.errors import ConfigError
from sslkd.lazy import lazy_import

curves = lazy_import("sslkd.eval.curves")  # matplotlib, only for loggers that take files


class Logger:
    """One destination: ``scalars`` per flush, ``finish`` with the run's files."""

    takes_files = False

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def finish(self, files: list[Path]) -> None: ...


class TensorBoard(Logger):
    def __init__(self, out: Path, config: dict, name: str) -> None:  # noqa: ARG002
        from torch.utils.tensorboard import SummaryWriter  # optional at import: training goes on without it

        self.writer = SummaryWriter(str(out / "tb"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def finish(self, files: list[Path]) -> None:  # noqa: ARG002
        self.writer.close()


class WandB(Logger):
    takes_files = True

    def __init__(self, out: Path, config: dict, name: str) -> None:
        import wandb

        id_file = out / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "sslkd"),
            name=name,
            id=run_id,
            resume="allow",
            dir=str(out),
            config=config,
            mode=os.environ.get("WANDB_MODE", "offline"),
        )

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def finish(self, files: list[Path]) -> None:
        for f in files:
            self.run.save(str(f), base_path=str(f.parent), policy="now")
        self.run.finish()


class MLflow(Logger):
    takes_files = True

    def __init__(self, out: Path, config: dict, name: str) -> None:
        import mlflow

        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:  # offline: a file store in the run folder (MLflow 3 asks to confirm one)
            uri = (out / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "sslkd"))
        id_file = out / "mlflow_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else name)
        id_file.write_text(self.run.info.run_id)
        if run_id is None:
            mlflow.log_params(_flat(config))

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)

    def finish(self, files: list[Path]) -> None:
        for f in files:
            self.mlflow.log_artifact(str(f))
        self.mlflow.end_run()


LOGGERS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}
EXTRA = {"wandb": "wandb", "mlflow": "mlflow-skinny"}


def open_loggers(names: list[str], out: Path, config: dict, name: str) -> list[Logger]:
    """The loggers ``names`` for run folder ``out``; a missing package is named with its install line
    (TensorBoard, a dependency, is skipped with a warning when broken)."""
    opened: list[Logger] = []
    for n in names:
        try:
            opened.append(LOGGERS[n](out, config, name))
        except ImportError as e:
            if n == "tensorboard":
                print(f"tensorboard logging off: {e}")
                continue
            for lg in opened:  # the ones already open are closed, not left running
                lg.finish([])
            raise ConfigError(f"train.loggers: {n} needs `pip install {EXTRA[n]}` (or sslkd[loggers])") from e
    return opened


def finish_loggers(loggers: list[Logger], out: Path) -> None:
    """Close every logger, handing the run's files (and a curves PNG) to those that take files."""
    if not any(lg.takes_files for lg in loggers):
        for lg in loggers:
            lg.finish([])
        return
    files = [out / f for f in ("config.yaml", "env.json", "metrics.jsonl") if (out / f).is_file()]
    with contextlib.suppress(ValueError):  # a run that failed before its first record has no curves
        files.append(curves.plot_curves([out], out / "curves.png", labels=[out.name], smooth=5))
    for lg in loggers:
        try:
            lg.finish(files if lg.takes_files else [])
        except Exception as e:  # noqa: BLE001 - a logger must not hide the run's own outcome
            warnings.warn(f"{type(lg).__name__} did not finish cleanly: {e}", stacklevel=2)


def attach(run: Path, files: list[Path]) -> list[str]:
    """Add ``files`` (``sslkd report``'s page) to the W&B / MLflow runs whose ids ``run`` kept;
    returns the loggers that took them."""
    took = []
    for name, cls, id_file in (("wandb", WandB, "wandb_id"), ("mlflow", MLflow, "mlflow_run_id")):
        if (run / id_file).is_file():
            try:
                cls(run, {}, run.name).finish(files)
                took.append(name)
            except Exception as e:  # noqa: BLE001 - the report is written; say why the logger has not got it
                warnings.warn(
                    f"{run}: the report was not added to its {name} run ({type(e).__name__}: {e})", stacklevel=2
                )
    return took


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: str(v)[:500]})
    return out
