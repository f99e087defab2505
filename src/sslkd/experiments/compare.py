"""``sslkd experiment compare``: pretrain several configs under the same budget and compare them
with a linear probe and weighted kNN on the CLS / pooled features (Acc@1, Acc@5), written as
Markdown and CSV with the runs' curves and (for ViTs) attention maps. SEED students next to
DINO-alone students at equal wall clock, or the iBOT variants of Table 1
(:mod:`sslkd.experiments.table1`)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import subprocess
from pathlib import Path

import torch

from sslkd.config import Config, ConfigError, load_config
from sslkd.data import get_dataset, held_out, view_tensors
from sslkd.device import environment, resolve_device
from sslkd.eval import evaluate
from sslkd.eval.attention import cls_attention, plot_attention
from sslkd.eval.curves import plot_curves
from sslkd.eval.finetune import finetune
from sslkd.eval.knn import DEFAULT_KS
from sslkd.experiments.seeds import summarize, summary_markdown
from sslkd.methods import build_method
from sslkd.train import Trainer, TrainingError

LABELS = {"kd": "iBOT & KD", "rkd-d": "iBOT & RKD-D", "rkd-a": "iBOT & RKD-A", "rkd-da": "iBOT & RKD-DA"}


BUDGET_UNITS = {
    "epochs": "train.epochs",
    "ep": "train.epochs",
    "steps": "train.max_steps",
    "min": "train.time_budget_minutes",
    "minutes": "train.time_budget_minutes",
}


def budget_overrides(spec: str) -> list[str]:
    """``--budget`` as config overrides: comma-separated ``<number><unit>`` with unit ``epochs``
    (``ep``), ``steps`` or ``min``; e.g. ``1epochs,20min`` stops each run at one epoch or after
    20 minutes of training, whichever comes first."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        number = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = part[len(number) :]
        key = BUDGET_UNITS.get(unit)
        try:
            value = float(number)
        except ValueError:
            value = None
        if key is None or value is None or value <= 0 or (key != "train.time_budget_minutes" and value % 1):
            raise ValueError(
                f"--budget: cannot read '{part}'; use <number><unit> with unit epochs, steps "
                f"or min (whole epochs and steps), comma-separated, e.g. 1epochs,20min"
            )
        out.append(f"{key}={value if key == 'train.time_budget_minutes' else int(value)}")
    return out


def label_of(cfg: Config) -> str:
    """A row's name: the distillation mode of iBOT runs, else the config's ``name`` when it was
    set, else the method and backbone."""
    distill = getattr(cfg.method, "distill", None)
    if distill is not None:
        return LABELS.get(distill.mode, distill.mode)
    if cfg.name != "run":
        return cfg.name
    return f"{cfg.method.name.upper()} {cfg.model.backbone}"


def labels_of(cfgs: list[Config], names: list[str]) -> list[str]:
    """Row and legend labels (:func:`label_of`); rows that would share one (two configs of one
    method, a recipe variant against its base) take the config's ``name``, else the run folder's."""
    labels = [label_of(c) for c in cfgs]
    for label in set(labels):
        same = [j for j, x in enumerate(labels) if x == label]
        if len(same) > 1:
            own = [cfgs[j].name for j in same]
            unique = len(set(own)) == len(own) and "run" not in own
            for j, name in zip(same, own):
                labels[j] = name if unique else names[j]
    return labels


def run_names(configs: list[str]) -> list[str]:
    """Each config's run folder under ``out``: its file stem, prefixed by its folder when stems
    collide (``configs/mocov3/cifar10_vit_tiny.yaml`` next to ``configs/mae/cifar10_vit_tiny.yaml``)."""
    stems = [Path(c).stem for c in configs]
    names = [f"{Path(c).parent.name}_{s}" if stems.count(s) > 1 else s for c, s in zip(configs, stems)]
    if len(set(names)) != len(names):
        raise ValueError(f"two configs would share a run folder: {', '.join(configs)}")
    return names


def models_of(cfg: Config) -> list[tuple[int, str]]:
    """``(model index, backbone name)`` of every model a run trains (MOKD trains two)."""
    second = getattr(cfg.method, "model2", None)
    return [(1, cfg.model.backbone)] + ([(2, second.backbone)] if second is not None else [])


def run_comparison(
    configs: list[str],
    out: str | Path,
    overrides: list[str] | None = None,
    eval_dataset: str | None = None,
    eval_root: str | None = None,
    linear_epochs: int = 100,
    random_init: bool = True,
    eval_train_samples: int | None = None,
    eval_test_samples: int | None = None,
    name: str = "comparison",
    finetune_epochs: int = 0,
    progress: bool = True,
    seeds: list[int] | None = None,
) -> list[dict]:
    """Pretrain every config into ``out/<config stem>`` (with ``seeds``: once per seed, into
    ``out/<config stem>/seed<s>`` with ``seed=s``), resuming if interrupted, evaluate each (and a
    random init of the first config's backbone), write ``<name>.md``/``.csv``/``.json`` (with
    ``seeds``: each row's mean and spread beside the per-seed figures), ``curves.png`` (one band
    per row over its seeds) and ``attention_<run>.png``. Each run's scores are kept in its folder
    (``compare_scores.json``): an interrupted experiment, run again, redoes neither the finished
    runs nor their evaluation. ``eval_*_samples`` evaluate on evenly spaced subsets (all classes)
    when the full sets cost too much. ``finetune_epochs > 0`` adds full fine-tuning
    (:func:`sslkd.eval.finetune.finetune`, default recipe, warm-up a fifth of the epochs up to 3)
    of a copy of every backbone on the same subsets. Returns the table rows (one per run)."""
    out = Path(out)
    commit = source_commit()  # the code that runs now (the tree may change before the experiment ends)
    names = run_names(configs)
    runs = _run_configs(configs, names, out, list(overrides or []), seeds)
    out.mkdir(parents=True, exist_ok=True)  # only once every config is valid
    first = runs[0][2]
    dataset = eval_dataset or first.data.name
    root = eval_root if eval_dataset else (eval_root or first.data.root)
    size = first.aug.global_crops_size or first.data.img_size
    ev_train = get_dataset(dataset, "train", root=root, img_size=size)
    ev_test = held_out(dataset, ev_train, root=root, img_size=size)
    settings = eval_settings(first, dataset, root, size, linear_epochs, eval_train_samples, eval_test_samples)
    scorer = _Scorer(ev_train, ev_test, first, settings, finetune_epochs, progress)
    rows = []
    if random_init:
        for seed in seeds or [None]:
            cfg = first if seed is None else runs[[r[1] for r in runs].index(seed)][2]
            folder = out / "random_init" / ("" if seed is None else f"seed{seed}")

            def rand(cfg=cfg):
                torch.manual_seed(cfg.init_seed)
                method = build_method(cfg, ev_train.num_channels, ev_train.img_size, eval_only=True)
                return method.eval_backbone("teacher")

            rows.append({"pretrain": "Random init", "seed": cfg.seed, "steps": 0, "minutes": 0.0,
                         **scorer.cached(folder, 0, 1, rand)})  # fmt: skip
    labels = dict(zip(names, labels_of([r[2] for r in runs[:: len(seeds or [None])]], names)))
    for run_name, seed, cfg in runs:
        first_seed = seed is None or seed == seeds[0]  # attention maps of one seed
        rows += _train_and_score(run_name, cfg, labels[run_name], scorer, out, progress, first_seed)
    groups = [[Path(c.output_dir) for n, _, c in runs if n == run_name] for run_name in names]
    plot_curves(groups, out / "curves.png", labels=[labels[n] for n in names], smooth=5)
    _write(rows, out, dataset, name, first, several=len(seeds or []) > 1)
    meta = {"commit": commit, "environment": environment(scorer.device), "overrides": list(overrides or [])}
    record = {"rows": rows, "configs": configs, "seeds": seeds, **meta}
    if seeds:
        record["summary"] = summarize(rows)
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return rows


def _run_configs(
    configs: list[str], names: list[str], out: Path, overrides: list[str], seeds: list[int] | None
) -> list[tuple[str, int | None, Config]]:
    """``(run name, seed or None, config)`` of every run, config by config, seed by seed; every
    config checked before any work."""
    runs = []
    for c, n in zip(configs, names):
        for seed in seeds or [None]:
            folder = out / n if seed is None else out / n / f"seed{seed}"
            extra = [f"output_dir={folder}"] + ([] if seed is None else [f"seed={seed}"])
            try:
                runs.append((n, seed, load_config(c, overrides + extra)))
            except ConfigError as e:  # say which of the configs (the shared --set may fit only some)
                raise ConfigError(f"{c}: {e}") from e
    return runs


def eval_settings(
    first: Config, dataset: str, root, size, linear_epochs: int, n_train: int | None, n_test: int | None
) -> dict:
    """What a run's scores depend on besides its weights: the key of its cached scores."""
    return {
        "dataset": dataset,
        "root": None if root is None else str(root),
        "size": size,
        "knn_t": first.eval.knn_t,
        "ks": list(DEFAULT_KS),
        "linear_epochs": linear_epochs,
        "eval_train": n_train,
        "eval_test": n_test,
    }


def score_key(settings: dict, step: int, model: int) -> str:
    """The key of one model's scores at ``step`` in a run's ``compare_scores.json``."""
    return json.dumps({**settings, "step": step, "model": model}, sort_keys=True)


class _Scorer:
    """Linear probe + weighted kNN (+ fine-tuning) of a backbone on the evaluation split, and a
    cache of each run's scores in its folder."""

    def __init__(self, ev_train, ev_test, first: Config, settings: dict, ft_epochs: int, progress: bool):
        self.ev_train, self.ev_test, self.first, self.size = ev_train, ev_test, first, settings["size"]
        self.linear_epochs = settings["linear_epochs"]
        self.n_train, self.n_test = settings["eval_train"], settings["eval_test"]
        self.ft_epochs, self.progress = ft_epochs, progress
        self.device = resolve_device(first.device)
        self.key = {**settings, "finetune": ft_epochs}

    def cached(self, folder: Path, step: int, model: int, backbone) -> dict:
        """The scores of model ``model`` at ``step`` from ``folder/compare_scores.json`` when it
        holds them for these evaluation settings; else ``backbone()``'s, stored there."""
        path = folder / "compare_scores.json"
        stored = json.loads(path.read_text()) if path.is_file() else {}
        key = score_key(self.key, step, model)
        if key not in stored:
            stored[key] = self.scores(backbone())
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stored, indent=1) + "\n")
        return stored[key]

    def scores(self, backbone) -> dict:
        device = self.device
        res = evaluate(
            backbone.to(device),
            self.ev_train,
            self.ev_test,
            ("knn", "linear"),
            device=device,
            k=DEFAULT_KS,
            temperature=self.first.eval.knn_t,
            linear_epochs=self.linear_epochs,
            max_train=self.n_train,
            max_test=self.n_test,
            progress=self.progress,
        )
        lin, knn = res["linear"], res["knn"]
        row = {
            "linear_top1": lin["top1"],
            "linear_top5": lin["top5"],
            "knn_top1": knn["top1"],
            "knn_top5": knn["top5"],
            "knn_k": knn["k"],
            **{f"knn_top1_k{k}": r["top1"] for k, r in knn["per_k"].items()},
            "eval_train": res["train_images"],
            "eval_test": res["test_images"],
        }
        if self.ft_epochs > 0:
            ft_train, ft_test = _subset(self.ev_train, self.n_train), _subset(self.ev_test, self.n_test)
            ft = finetune(
                copy.deepcopy(backbone),
                ft_train,
                ft_test,
                self.ev_train.mean,
                self.ev_train.std,
                self.size,
                epochs=self.ft_epochs,
                warmup_epochs=min(3.0, self.ft_epochs / 5),
                precision=self.first.train.precision,
                device=device,
                seed=self.first.seed,
                progress=self.progress,
            )
            row.update(finetune_top1=ft["top1"], finetune_top5=ft["top5"])
        return row


def _train_and_score(
    run_name: str, cfg: Config, label: str, scorer: _Scorer, out: Path, progress: bool, first_seed: bool
) -> list[dict]:
    """Train (or resume, or find finished) one run and score each model it trains; attention maps
    of the first seed's ViTs."""
    trainer = Trainer(cfg, progress=progress)
    ev_train, ev_test = scorer.ev_train, scorer.ev_test
    if trainer.train_set.num_channels != ev_train.num_channels:
        raise ValueError(
            f"{run_name}: pretrained on {trainer.train_set.num_channels}-channel images, "
            f"the evaluation set has {ev_train.num_channels}"
        )
    summary = trainer.fit(resume="auto")
    if summary["status"] == "interrupted":  # Ctrl-C / SIGTERM stop the experiment, not just this run
        raise TrainingError(
            f"{run_name}: interrupted at step {summary['step']} (checkpoint written); "
            f"run the same command again to resume the experiment"
        )
    rows, models = [], models_of(cfg)
    for model, arch in models:
        backbone = trainer.method.eval_backbone("teacher", model)
        row_label = label if len(models) == 1 else f"{label}: {arch} (model {model})"
        scores = scorer.cached(Path(cfg.output_dir), summary["step"], model, lambda b=backbone: b)
        rows.append(
            {"pretrain": row_label, "seed": cfg.seed, "steps": summary["step"],
             "minutes": summary["train_seconds"] / 60, **scores}
        )  # fmt: skip
        spread = torch.linspace(0, len(ev_test) - 1, 6).long().tolist()  # over the classes
        images = view_tensors(ev_test, spread, trainer.method.img_size)
        if first_seed and getattr(backbone, "is_vit", False) and images.shape[-1] == trainer.method.img_size:
            maps = cls_attention(backbone.cpu(), images, ev_train.mean, ev_train.std)
            suffix = "" if len(models) == 1 else f"_model{model}"
            plot_attention(images, maps, out / f"attention_{run_name}{suffix}.png", row_label)
    return rows


def source_commit() -> str | None:
    """The git commit (``+dirty`` when the tree has changes) of the sslkd source, if it is a checkout."""
    here = Path(__file__).parent

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return None


def _subset(dataset, n: int | None):
    """The evenly spaced ``n`` images of ``dataset`` that :func:`extract_features` takes."""
    if n is None or n >= len(dataset):
        return dataset
    idx = torch.linspace(0, len(dataset) - 1, n).long().numpy()
    return dataclasses.replace(dataset, images=dataset.images[idx], labels=dataset.labels[idx])


def _write(rows: list[dict], out: Path, dataset: str, name: str, cfg: Config, several: bool = False) -> None:
    tuned = "finetune_top1" in rows[0]
    keys = [
        "pretrain",
        "seed",
        "steps",
        "minutes",
        "linear_top1",
        "linear_top5",
        "knn_top1",
        "knn_top5",
        "knn_k",
        *(f"knn_top1_k{k}" for k in DEFAULT_KS),
        "eval_train",
        "eval_test",
    ] + (["finetune_top1", "finetune_top5"] if tuned else [])
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows({k: (round(r[k], 2) if isinstance(r[k], float) else r[k]) for k in keys} for r in rows)
    n_train, n_test = rows[0]["eval_train"], rows[0]["eval_test"]
    lines = [
        f"Results on {dataset} ({n_train} train / {n_test} test images; linear probe on frozen CLS / pooled "
        f"features; weighted kNN T={cfg.eval.knn_t}, the best of k = {', '.join(map(str, DEFAULT_KS))}, "
        f"each k in the CSV / JSON)",
        "",
    ]
    if several:  # each row's seeds: mean and spread first, every run below
        lines += [*summary_markdown(summarize(rows)), "", "Every run:", ""]
    lines += [
        f"| Pre-train |{' seed |' if several else ''} steps | train min | Sup linear Acc@1 | Acc@5 | "
        "Unsup kNN Acc@1 | Acc@5 | k |" + (" Fine-tune Acc@1 | Acc@5 |" if tuned else ""),
        f"| --- |{' ---: |' if several else ''} ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        + (" ---: | ---: |" if tuned else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['pretrain']} |"
            + (f" {r['seed']} |" if several else "")
            + " "
            + f"{r['steps']} | {r['minutes']:.1f} | {r['linear_top1']:.2f} | "
            f"{r['linear_top5']:.2f} | {r['knn_top1']:.2f} | {r['knn_top5']:.2f} | {r['knn_k']} |"
            + (f" {r['finetune_top1']:.2f} | {r['finetune_top5']:.2f} |" if tuned else "")
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
