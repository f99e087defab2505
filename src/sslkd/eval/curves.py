"""Training curves of one or more runs (the paper's Figure 2): loss terms and teacher/student
agreement per step, read from each run's ``metrics.jsonl``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SKIP = {"step", "epoch", "lr", "wd", "momentum", "img_per_s", "teacher_temp", "knn_top1", "knn_top5"}
# diagnostics, not loss terms; methods that train several models log them as <name><model>
DIAGNOSTICS = ("agreement", "teacher_entropy", "feature_std", "mask_ratio", "effective_rank", "cosine_to_fused")


def _is_diagnostic(key: str) -> bool:
    return key.rstrip("0123456789") in DIAGNOSTICS


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


def plot_curves(runs: list[str | Path], out: str | Path, labels: list[str] | None = None, smooth: int = 1) -> Path:
    """PNG with two panels: every loss term (solid: total) and the teacher/student agreement."""
    if labels and len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs: give one label per run")
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, run in enumerate(runs):
        rows = read_metrics(run)
        if not rows:
            raise ValueError(f"{run}: no training records")
        label = labels[i] if labels else Path(run).name
        steps = [r["step"] for r in rows]
        color = f"C{i % 10}"
        for key in [k for k in rows[-1] if k not in SKIP and not _is_diagnostic(k)]:
            ys = _smooth([r.get(key, float("nan")) for r in rows], smooth)
            ax_l.plot(
                steps,
                ys,
                color=color,
                lw=1.6 if key == "loss" else 0.8,
                ls="-" if key == "loss" else "--",
                label=f"{label}: {key}",
            )
        # MOKD: one per model (agreement1, agreement2); DMT: the student's cosine to the fused teacher
        agreements = [k for k in rows[-1] if k.rstrip("0123456789") == "agreement" or k == "cosine_to_fused"]
        for n, key in enumerate(agreements):
            name = (
                label
                if key == "agreement"
                else f"{label}: cosine to fused teacher x 100"
                if key == "cosine_to_fused"
                else f"{label}: model {key[len('agreement') :]}"
            )
            ax_a.plot(
                steps,
                _smooth([100 * r.get(key, float("nan")) for r in rows], smooth),
                color=color,
                ls=("-", "--", ":")[n % 3],
                label=name,
            )
    ax_l.set(xlabel="step", ylabel="loss", title="loss terms")
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
