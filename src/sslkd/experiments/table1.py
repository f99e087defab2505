"""The masked-relational-KD paper's Table 1: random init vs iBOT & KD vs iBOT & RKD-D vs iBOT &
RKD-A, each pretrained with the same budget, evaluated with a linear probe and weighted kNN on
the CLS token (Acc@1, Acc@5), written as Markdown and CSV, with the curves (Figure 2) and
attention maps (Figure 3) of the runs."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.eval import extract_features, knn_classify, linear_probe
from sslkd.eval.attention import cls_attention, plot_attention
from sslkd.eval.curves import plot_curves
from sslkd.methods import build_method
from sslkd.train import Trainer
from sslkd.device import resolve_device

DEFAULT_CONFIGS = ["configs/ibot/cifar10_vit_tiny_kd.yaml", "configs/ibot/cifar10_vit_tiny_rkd_d.yaml",
                   "configs/ibot/cifar10_vit_tiny_rkd_a.yaml"]
LABELS = {"kd": "iBOT & KD", "rkd-d": "iBOT & RKD-D", "rkd-a": "iBOT & RKD-A", "rkd-da": "iBOT & RKD-DA"}


def run_table1(configs: list[str], out: str | Path, overrides: list[str] | None = None,
               eval_dataset: str | None = None, eval_root: str | None = None, linear_epochs: int = 100,
               progress: bool = True) -> list[dict]:
    """Pretrain every config (resuming if interrupted), evaluate, write ``table1.md``/``.csv``,
    ``curves.png`` and ``attention_<run>.png`` into ``out``. Returns the table rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = [load_config(c, list(overrides or []) + [f"output_dir={out / Path(c).stem}"]) for c in configs]
    first = cfgs[0]
    name = eval_dataset or first.data.name
    root = eval_root if eval_dataset else (eval_root or first.data.root)
    size = first.aug.global_crops_size or first.data.img_size
    ev_train = get_dataset(name, "train", root=root, img_size=size)
    ev_test = get_dataset(name, "test", root=root, img_size=size)
    device = resolve_device(first.device)

    def evaluate(backbone) -> dict:
        kw = dict(mean=ev_train.mean, std=ev_train.std, device=device, progress=progress)
        ftr, ltr = extract_features(backbone.to(device), ev_train, **kw)
        fte, lte = extract_features(backbone, ev_test, **kw)
        lin = linear_probe(ftr, ltr, fte, lte, ev_train.num_classes, epochs=linear_epochs)
        knn = knn_classify(ftr, ltr, fte, lte, first.eval.knn_k, first.eval.knn_t, ev_train.num_classes)
        return {"linear_top1": lin["top1"], "linear_top5": lin["top5"], "knn_top1": knn["top1"], "knn_top5": knn["top5"]}

    torch.manual_seed(first.seed)
    rand = build_method(first, ev_train.num_channels, ev_train.img_size).eval_backbone("teacher")
    rows = [{"pretrain": "Random init", "steps": 0, **evaluate(rand)}]
    runs = []
    for path, cfg in zip(configs, cfgs):
        trainer = Trainer(cfg, progress=progress)
        if trainer.train_set.num_channels != ev_train.num_channels:
            raise ValueError(f"{path}: pretrained on {trainer.train_set.num_channels}-channel images, "
                             f"{name} has {ev_train.num_channels}")
        summary = trainer.fit(resume="auto")
        runs.append(Path(cfg.output_dir))
        backbone = trainer.method.eval_backbone("teacher")
        rows.append({"pretrain": LABELS.get(getattr(cfg.method, "distill", None) and cfg.method.distill.mode,
                                            cfg.method.name), "steps": summary["step"], **evaluate(backbone)})
        images = ev_test.tensors()[0][:4]
        if getattr(backbone, "is_vit", False) and images.shape[-1] == trainer.method.img_size:
            maps = cls_attention(backbone.cpu(), images, ev_train.mean, ev_train.std, threshold=0.6)
            plot_attention(images, maps, out / f"attention_{Path(path).stem}.png", rows[-1]["pretrain"])
    plot_curves(runs, out / "curves.png", labels=[r["pretrain"] for r in rows[1:]], smooth=5)
    _write(rows, out, name)
    return rows


def _write(rows: list[dict], out: Path, dataset: str) -> None:
    keys = ["pretrain", "steps", "linear_top1", "linear_top5", "knn_top1", "knn_top5"]
    with open(out / "table1.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows({k: (round(r[k], 2) if isinstance(r[k], float) else r[k]) for k in keys} for r in rows)
    lines = [f"Results on {dataset} (linear probe on frozen CLS features; weighted kNN k=20, T=0.07)", "",
             "| Pre-train | steps | Sup linear Acc@1 | Acc@5 | Unsup CLS kNN Acc@1 | Acc@5 |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['pretrain']} | {r['steps']} | {r['linear_top1']:.2f} | {r['linear_top5']:.2f} | "
                     f"{r['knn_top1']:.2f} | {r['knn_top5']:.2f} |")
    (out / "table1.md").write_text("\n".join(lines) + "\n")
