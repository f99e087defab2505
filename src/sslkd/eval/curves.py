"""Training curves of one or more runs (the paper's Figure 2): loss terms and teacher/student
agreement per step, read from each run's ``metrics.jsonl``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SKIP = {"step", "epoch", "lr", "wd", "momentum", "img_per_s", "teacher_temp", "skipped_files"}
# diagnostics, not loss terms; methods that train several models log them as <name><model>
DIAGNOSTICS = ("agreement", "teacher_entropy", "feature_std", "mask_ratio", "effective_rank", "cosine_to_fused")


def is_diagnostic(key: str) -> bool:
    return key.rstrip("0123456789") in DIAGNOSTICS


def _is_accuracy(key: str) -> bool:  # the evaluation monitor's <protocol>_top1/_top5
    return key.endswith(("_top1", "_top5"))


def read_records(path: Path) -> list[dict]:
    """Every JSON record of a ``metrics.jsonl``; a torn line (a run killed mid-write) is skipped
    with a warning naming the file and line."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{n}: skipping a torn record ({line[:60]!r})", stacklevel=2)
    return rows


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl" if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl at {path}")
    rows = read_records(path)
    by_step: dict[int, dict] = {}
    for r in rows:  # a resumed run may repeat steps: keep the latest record of each
        if "loss" in r:
            by_step[r["step"]] = r
    return [by_step[s] for s in sorted(by_step)]


def _band(groups: list[list[dict]], key: str, smooth: int, scale: float = 1.0):
    """(steps, mean, min, max) of ``key`` over the runs of one row (seeds), at the steps all have."""
    common = sorted(set.intersection(*({r["step"] for r in rows} for rows in groups)))
    series = []
    for rows in groups:
        by_step = {r["step"]: scale * r.get(key, float("nan")) for r in rows}
        series.append(np.array(_smooth([by_step[t] for t in common], smooth)))
    stacked = np.stack(series) if series else np.zeros((1, 0))
    return common, stacked.mean(0), stacked.min(0), stacked.max(0)


def plot_curves(
    runs: list[str | Path | list[str | Path]], out: str | Path, labels: list[str] | None = None, smooth: int = 1
) -> Path:
    """PNG with two panels: every loss term (solid: total) and the teacher/student agreement. An
    entry of ``runs`` may be a list of runs (one row's seeds): its mean is drawn with a band from
    the seeds' minimum to maximum."""
    if labels and len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs: give one label per run")
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, entry in enumerate(runs):
        group = list(entry) if isinstance(entry, list | tuple) else [entry]
        records = [read_metrics(run) for run in group]
        for run, rows in zip(group, records):
            if not rows:
                raise ValueError(f"{run}: no training records")
        label = labels[i] if labels else Path(group[0]).name
        seeds = f" ({len(group)} seeds)" if len(group) > 1 else ""
        color, last = f"C{i % 10}", records[0][-1]
        for key in [k for k in last if k not in SKIP and not is_diagnostic(k) and not _is_accuracy(k)]:
            steps, mean, lo, hi = _band(records, key, smooth)
            main = key == "loss"
            ax_l.plot(
                steps,
                mean,
                color=color,
                lw=1.6 if main else 0.8,
                ls="-" if main else "--",
                label=f"{label}{seeds}: {key}",
            )
            if len(group) > 1 and main:
                ax_l.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
        # MOKD: one per model (agreement1, agreement2); DMT: the student's cosine to the fused teacher
        agreements = [k for k in last if k.rstrip("0123456789") == "agreement" or k == "cosine_to_fused"]
        for n, key in enumerate(agreements):
            name = (
                label
                if key == "agreement"
                else f"{label}: cosine to fused teacher x 100"
                if key == "cosine_to_fused"
                else f"{label}: model {key[len('agreement') :]}"
            )
            steps, mean, lo, hi = _band(records, key, smooth, 100.0)
            ax_a.plot(steps, mean, color=color, ls=("-", "--", ":")[n % 3], label=name + seeds)
            if len(group) > 1:
                ax_a.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
    ax_l.set(xlabel="step", ylabel="loss", title="loss terms (band: min-max over seeds)")
    ax_a.set(xlabel="step", ylabel="% images, same argmax (DMT: cosine x 100)", title="teacher/student agreement")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:  # methods without a teacher/student argmax (MAE)
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _smooth(ys: list[float], k: int) -> list[float]:
    if k <= 1:
        return ys
    out, acc = [], []
    for y in ys:
        acc.append(y)
        acc = acc[-k:]
        out.append(sum(acc) / len(acc))
    return out
