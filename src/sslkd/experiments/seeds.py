"""Several seeds per row of an experiment: which seeds, and each row's mean and spread.

A difference between two rows is *resolved* when it exceeds the seeds' spread: the gap between
the means is larger than the sum of the two rows' standard deviations and the rows' ranges
(min-max) do not overlap. :func:`summarize` gives the statistics, :func:`summary_markdown` the
table, :func:`verdict` the word for a pair of rows.
"""

from __future__ import annotations

import statistics


def metrics_of(row: dict) -> list[str]:
    """The headline figure of every protocol in a row: its ``<protocol>_top1`` keys."""
    return [k for k in row if k.endswith("_top1")]


def parse_seeds(spec: str | None) -> list[int] | None:
    """``--seeds``: a count N (seeds 0..N-1) or a comma-separated list (``0,1,5``); None or empty:
    one run with the config's own seed, in the run folder of old."""
    if not spec:
        return None
    try:
        values = [int(p) for p in spec.split(",") if p.strip()] if "," in spec else list(range(int(spec)))
    except ValueError:
        values = []
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise ValueError(f"--seeds: give a count (3) or a list of distinct seeds >= 0 (0,1,5), got '{spec}'")
    return values


def summarize(rows: list[dict]) -> list[dict]:
    """One summary per row label (``pretrain``), in first-seen order: ``seeds``, ``steps`` (the
    first seed's), and for each protocol's top-1 (:func:`metrics_of`) ``<m>_mean``, ``_std`` (0 for one seed), ``_min``,
    ``_max`` and ``_all`` (per seed, in seed order)."""
    labels: dict[str, list[dict]] = {}
    for r in rows:
        labels.setdefault(r["pretrain"], []).append(r)
    out = []
    for label, group in labels.items():
        group = sorted(group, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
        s = {"pretrain": label, "seeds": [r.get("seed") for r in group], "steps": group[0]["steps"]}
        for m in metrics_of(group[0]):
            values = [float(r[m]) for r in group]
            s.update(
                {
                    f"{m}_mean": statistics.fmean(values),
                    f"{m}_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    f"{m}_min": min(values),
                    f"{m}_max": max(values),
                    f"{m}_all": values,
                }
            )
        out.append(s)
    return out


def verdict(a: dict, b: dict, metric: str) -> str:
    """``resolved`` when the means of summaries ``a`` and ``b`` differ by more than the sum of
    their standard deviations and their min-max ranges do not overlap; else ``not resolved``
    (always so with one seed a row: a single run has no spread to compare with)."""
    if len(a["seeds"]) < 2 or len(b["seeds"]) < 2:
        return "not resolved (one seed)"
    gap = abs(a[f"{metric}_mean"] - b[f"{metric}_mean"])
    apart = a[f"{metric}_min"] > b[f"{metric}_max"] or b[f"{metric}_min"] > a[f"{metric}_max"]
    return "resolved" if gap > a[f"{metric}_std"] + b[f"{metric}_std"] and apart else "not resolved"


def summary_markdown(summaries: list[dict], titles: dict[str, str] | None = None) -> list[str]:
    """Markdown lines: each row's mean ± std (min-max) and per-seed figures, per metric
    (``titles``: a metric's heading, default its key)."""
    metrics = [k[: -len("_mean")] for k in summaries[0] if k.endswith("_mean")]
    titles = titles or {}
    head = "| Pre-train | seeds | steps | " + " | ".join(
        f"{titles.get(m, m)}: mean ± std (min-max) | per seed" for m in metrics
    )
    lines = [head + " |", "| --- | --- | ---: |" + " ---: | --- |" * len(metrics)]
    for s in summaries:
        cells = []
        for m in metrics:
            cells.append(
                f"{s[f'{m}_mean']:.2f} ± {s[f'{m}_std']:.2f} ({s[f'{m}_min']:.2f}-{s[f'{m}_max']:.2f})"
                f" | {' / '.join(f'{v:.2f}' for v in s[f'{m}_all'])}"
            )
        seeds = ",".join("config" if x is None else str(x) for x in s["seeds"])
        lines.append(f"| {s['pretrain']} | {seeds} | {s['steps']} | " + " | ".join(cells) + " |")
    return lines
