"""``sslkd report``: one self-contained HTML page (figures embedded as PNG data URIs) for one or
more runs: config, environment, loss terms and teacher/student agreement, schedules, kNN over
epochs, collapse indicators, final kNN/linear (and fine-tuning, where a run has one) tables,
attention maps of fixed test images and a t-SNE of test features. Readable without a server."""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from sslkd.data import view_tensors  # noqa: E402
from sslkd.data.registry import labelled_splits  # noqa: E402
from sslkd.device import environment, resolve_device  # noqa: E402
from sslkd.eval import evaluate  # noqa: E402
from sslkd.eval.analysis import plot_tsne  # noqa: E402
from sslkd.eval.attention import cls_attention, plot_attention  # noqa: E402
from sslkd.eval.curves import plot_curves, read_metrics, read_records  # noqa: E402
from sslkd.pretrained import load_pretrained  # noqa: E402

SCHEDULES = ("lr", "wd", "momentum", "teacher_temp")
COLLAPSE = ("teacher_entropy", "feature_std", "effective_rank")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _file_png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _lines(runs: dict[str, list[dict]], keys: tuple[str, ...], title: str) -> tuple[str | None, str]:
    """(PNG of one panel per logged key, caption naming the keys)."""
    present = [k for k in keys if any(k in r for rows in runs.values() for r in rows)]
    if not present:
        return None, ""
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.2), squeeze=False)
    for ax, key in zip(axes[0], present):
        for i, (name, rows) in enumerate(runs.items()):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), color=f"C{i}", label=name, lw=1.2)
        ax.set(title=key, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _png(fig), f"<p class=note>Per step: {', '.join(present)}.</p>"


def _monitor_records(run: Path) -> list[dict]:
    """The evaluation monitor's records of a run (``eval.protocols`` every ``eval.knn_every`` epochs)."""
    path = run / "metrics.jsonl"
    return [r for r in read_records(path) if "loss" not in r and any(k.endswith("_top1") for k in r)]


def build_report(
    runs: list[str | Path],
    out: str | Path,
    dataset: str | None = None,
    root: str | None = None,
    eval_train_samples: int | None = 5000,
    eval_test_samples: int | None = 1000,
    linear_epochs: int = 50,
    device: str = "auto",
    progress: bool = False,
) -> Path:
    """Write the HTML report of ``runs`` (run folders) to ``out``; returns its path."""
    paths = [Path(r) for r in runs]
    for p in paths:
        if not (p / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{p} is not a run folder (no metrics.jsonl)")
    names = [p.name for p in paths]
    metrics = {n: read_metrics(p) for n, p in zip(names, paths)}
    dev = resolve_device(device)
    parts: list[str] = []

    def section(title: str, body: str) -> None:
        parts.append(f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>")

    def img(b64: str | None, alt: str) -> str:
        return (
            f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'
            if b64
            else f"<p class=note>{html.escape(alt)}: nothing logged.</p>"
        )

    section(
        "Runs",
        "<ul>"
        + "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(str(p.resolve()))}</li>" for n, p in zip(names, paths))
        + "</ul>",
    )
    section(
        "Config",
        "".join(
            f"<details><summary><b>{html.escape(n)}</b> (config.yaml)</summary>"
            f"<pre>{html.escape((p / 'config.yaml').read_text())}</pre></details>"
            for n, p in zip(names, paths)
            if (p / "config.yaml").is_file()
        ),
    )
    env_rows = []
    for n, p in zip(names, paths):
        env = json.loads((p / "env.json").read_text()) if (p / "env.json").is_file() else {}
        env_rows.append(
            f"<h3>{html.escape(n)} (training)</h3>" + (_table([env]) if env else "<p class=note>not recorded</p>")
        )
    section("Environment", "".join(env_rows) + "<h3>this report</h3>" + _table([environment()]))
    with tempfile.TemporaryDirectory() as tmp:
        curves = plot_curves(paths, Path(tmp) / "curves.png", labels=names, smooth=5)
        section("Loss terms and teacher/student agreement", img(_file_png(curves), "loss terms and agreement"))
    png, caption = _lines(metrics, SCHEDULES, "schedules per step")
    section("Schedules", img(png, "schedules") + caption)
    monitored = {n: _monitor_records(p) for n, p in zip(names, paths)}
    if any(monitored.values()):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for i, (n, rows) in enumerate(monitored.items()):
            keys = [k for k in rows[0] if k.endswith("_top1")] if rows else []
            for key, style in zip(keys, ("o-", "s--", "^:")):
                label = n if len(keys) == 1 else f"{n}: {key.removesuffix('_top1')}"
                ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], style, color=f"C{i}", label=label)
        ax.set(xlabel="epoch", ylabel="top-1 (%)", title="monitor during pretraining (eval.protocols)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        section("Accuracy over epochs", img(_png(fig), "accuracy over epochs"))
    else:
        section("Accuracy over epochs", "<p class=note>not logged (eval.knn_every: 0); final figures below.</p>")
    png, caption = _lines(metrics, COLLAPSE, "collapse indicators")
    section("Collapse indicators", img(png, "collapse indicators") + caption)

    rows, figures = [], []
    for n, p in zip(names, paths):
        pre = load_pretrained(p)
        d = pre.config.data
        name = dataset or d.name
        kw = {"root": root or d.root} if (root or d.root) else {}
        if name == d.name:
            kw["options"] = d.options  # the source's own options (hf)
        train, test = labelled_splits(name, img_size=pre.img_size if name == "synthetic" else None, **kw)
        asked = {
            "knn": {"k": pre.config.eval.knn_k, "temperature": pre.config.eval.knn_t},
            "linear": {"epochs": linear_epochs},
        }
        res = evaluate(
            pre.backbone.to(dev), train, test, asked, mean=pre.mean, std=pre.std, device=dev,
            max_train=eval_train_samples, max_test=eval_test_samples, progress=progress, return_features=True,
        )  # fmt: skip
        k, lin, (fte, lte) = res["knn"], res["linear"], res["test_features"]
        ft = json.loads((p / "finetune.json").read_text()) if (p / "finetune.json").is_file() else {}
        semi = {f.stem.split("_", 1)[1]: json.loads(f.read_text()) for f in sorted(p.glob("finetune_*.json"))}
        rows.append(
            {
                "run": n,
                "step": pre.step,
                "dataset": name,
                "eval train/test": f"{res['train_images']}/{res['test_images']}",
                "kNN top-1": f"{k['top1']:.2f}",
                "kNN top-5": f"{k['top5']:.2f}",
                "linear top-1": f"{lin['top1']:.2f}",
                "linear top-5": f"{lin['top5']:.2f}",
                "fine-tune top-1": f"{ft['top1']:.2f}" if "top1" in ft else "not run",
                **{f"fine-tune top-1, {float(k):.0%} labels": f"{v['top1']:.2f}" for k, v in semi.items()},
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            images = view_tensors(test, torch.linspace(0, len(test) - 1, 4).long().tolist(), pre.img_size)
            if getattr(pre.backbone, "is_vit", False):
                maps = cls_attention(pre.backbone.cpu(), images, pre.mean, pre.std)
                att = _file_png(plot_attention(images, maps, Path(tmp) / "att.png", f"{n}: last-block CLS attention"))
            else:
                att = None
            tsne = _file_png(
                plot_tsne(
                    fte,
                    lte,
                    Path(tmp) / "tsne.png",
                    class_names=test.classes,
                    title=f"{n}: t-SNE of test features",
                    max_points=1000,
                )
            )
        figures.append((n, att, tsne))
    section(
        "Final evaluation (frozen teacher backbone)",
        _table(rows) + "<p class=note>Weighted kNN (cosine, the run's k and T) and a linear probe on frozen CLS/pooled "
        "features of evenly spaced subsets; fine-tuning from a run's finetune.json.</p>",
    )
    section("Attention maps", "".join(img(a, f"{n}: attention (ViTs only)") for n, a, _ in figures))
    section("t-SNE of test features", "".join(img(t, f"{n}: t-SNE") for n, _, t in figures))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_PAGE.format(title=html.escape("sslkd report: " + ", ".join(names)), body="\n".join(parts)))
    return out


def _table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))  # union, first-seen order
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
img{{max-width:100%;margin:.5em 0}}pre{{background:#f6f6f6;padding:.6em;font-size:12px;overflow:auto}}
.note{{color:#666;font-size:13px}}h2{{border-bottom:1px solid #ddd}}</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
