"""``sslkd experiment compare``: pretrain several configs under the same budget and compare them
with a linear probe and weighted kNN on the CLS / pooled features (Acc@1, Acc@5), written as
Markdown and CSV with the runs' curves and (for ViTs) attention maps. SEED students next to
DINO-alone students at equal wall clock, or the iBOT variants of Table 1
(:mod:`sslkd.experiments.table1`)."""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

from sslkd.api import pretrain
from sslkd.config import Config, ConfigError, load_config, to_dict
from sslkd.data import view_tensors
from sslkd.data.registry import labelled_splits
from sslkd.device import environment, resolve_device
from sslkd.distributed import rank
from sslkd.eval import evaluate, get_protocol, options_of
from sslkd.eval.attention import cls_attention, plot_attention
from sslkd.eval.curves import plot_curves
from sslkd.eval.knn import DEFAULT_KS
from sslkd.experiments.seeds import summarize, summary_markdown
from sslkd.methods import build_method, method_class
from sslkd.pretrained import load_pretrained
from sslkd.train import TrainingError
from sslkd.train.inputs import load_datasets

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
    """A row's name: what the method calls it (:meth:`~sslkd.methods.Method.row_label`: iBOT's
    distillation mode), else the config's ``name`` when it was set, else the method and backbone."""
    own = method_class(cfg.method.name).row_label(cfg.method)
    if own is not None:
        return own
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
    return list(enumerate(method_class(cfg.method.name).backbones(cfg), start=1))


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
    protocols: Sequence[str] = ("linear", "knn"),
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
    of a copy of every backbone on the same subsets. ``protocols``: the frozen-feature protocols
    every backbone is scored by (any of :data:`~sslkd.eval.PROTOCOLS`; kNN with the first config's
    ``eval.knn_t`` and k = 10, 20, 100, 200, the linear probe with ``linear_epochs``, the others
    with their defaults). Returns the table rows (one per run)."""
    out = Path(out)
    commit = source_commit()  # the code that runs now (the tree may change before the experiment ends)
    names = run_names(configs)
    runs = _run_configs(configs, names, out, list(overrides or []), seeds)
    first = runs[0][2]
    asked = scoring_protocols(first, protocols, linear_epochs, finetune_epochs)
    out.mkdir(parents=True, exist_ok=True)  # only once every config and protocol is valid
    dataset = eval_dataset or first.data.name
    root = eval_root if eval_dataset else (eval_root or first.data.root)
    size = first.aug.global_crops_size or first.data.img_size
    options = None if eval_dataset else first.data.options  # the training source's own options (hf)
    ev_train, ev_test = labelled_splits(dataset, root=root, img_size=size, options=options)
    settings = eval_settings(dataset, root, size, asked, eval_train_samples, eval_test_samples)
    scorer = Scorer(ev_train, ev_test, first, settings, asked, progress)
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
    _write(rows, out, dataset, name, asked, several=len(seeds or []) > 1)
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


def scoring_protocols(first: Config, names: Sequence[str], linear_epochs: int, finetune_epochs: int) -> dict:
    """``{protocol: options}`` every backbone is scored by: ``names`` (unknown ones named with the
    valid), and fine-tuning with the default recipe when ``finetune_epochs > 0`` (warm-up a fifth of
    the epochs up to 3, the first config's precision)."""
    given = {
        "knn": {"k": DEFAULT_KS, "temperature": first.eval.knn_t},
        "linear": {"epochs": linear_epochs},
    }
    asked = {name: options_of(name, given.get(name)) for name in names}
    if finetune_epochs > 0:
        precision = first.train.precision
        asked["finetune"] = options_of(
            "finetune",
            {
                "epochs": finetune_epochs,
                "warmup_epochs": min(3.0, finetune_epochs / 5),
                "precision": "auto" if precision == "fp16" else precision,
            },
        )
    if not any(get_protocol(name).frozen for name in asked):
        raise ConfigError("an experiment scores frozen features by at least one protocol (knn, linear, logreg)")
    return asked


def eval_settings(dataset: str, root, size, protocols: dict, n_train: int | None, n_test: int | None) -> dict:
    """What a run's scores depend on besides its weights: the key of its cached scores."""
    return {
        "dataset": dataset,
        "root": None if root is None else str(root),
        "size": size,
        "protocols": {name: to_dict(options) for name, options in protocols.items()},
        "eval_train": n_train,
        "eval_test": n_test,
    }


def score_key(settings: dict, step: int, model: int) -> str:
    """The key of one model's scores at ``step`` in a run's ``compare_scores.json``."""
    return json.dumps({**settings, "step": step, "model": model}, sort_keys=True)


class Scorer:
    """The protocols' scores of a backbone on the evaluation split, and a cache of each run's
    scores in its folder (also used by benchmarks that train elsewhere, so that every engine is
    scored by the same code)."""

    def __init__(self, ev_train, ev_test, first: Config, settings: dict, protocols: dict, progress: bool):
        self.ev_train, self.ev_test, self.first, self.size = ev_train, ev_test, first, settings["size"]
        self.n_train, self.n_test = settings["eval_train"], settings["eval_test"]
        self.protocols, self.progress = protocols, progress
        self.device = resolve_device(first.device)
        self.key = settings

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
        res = evaluate(
            backbone.to(self.device), self.ev_train, self.ev_test, self.protocols, device=self.device,
            seed=self.first.seed, max_train=self.n_train, max_test=self.n_test, progress=self.progress,
        )  # fmt: skip
        row = {
            f"{name}_{key}": value
            for name in self.protocols
            for key, value in get_protocol(name).columns(res[name]).items()
        }
        row.update(eval_train=res["train_images"], eval_test=res["test_images"])
        return row


def _train_and_score(
    run_name: str, cfg: Config, label: str, scorer: Scorer, out: Path, progress: bool, first_seed: bool
) -> list[dict]:
    """Train (or resume, or find finished) one run through the Python API and score each model it
    trains, read back from its checkpoint; attention maps of the first seed's ViTs."""
    ev_train, ev_test = scorer.ev_train, scorer.ev_test
    train_set, test_set = load_datasets(cfg, verbose=rank() == 0)  # what the run trains on, checked first
    if train_set.num_channels != ev_train.num_channels:
        raise ValueError(
            f"{run_name}: pretrained on {train_set.num_channels}-channel images, "
            f"the evaluation set has {ev_train.num_channels}"
        )
    summary = pretrain(cfg, progress=progress, datasets=(train_set, test_set)).summary
    if summary["status"] == "interrupted":  # Ctrl-C / SIGTERM stop the experiment, not just this run
        raise TrainingError(
            f"{run_name}: interrupted at step {summary['step']} (checkpoint written); "
            f"run the same command again to resume the experiment"
        )
    rows, models = [], models_of(cfg)
    for model, arch in models:
        pre = load_pretrained(cfg.output_dir, "teacher", model)
        backbone = pre.backbone
        row_label = label if len(models) == 1 else f"{label}: {arch} (model {model})"
        scores = scorer.cached(Path(cfg.output_dir), summary["step"], model, lambda b=backbone: b)
        rows.append(
            {"pretrain": row_label, "seed": cfg.seed, "steps": summary["step"],
             "minutes": summary["train_seconds"] / 60, **scores}
        )  # fmt: skip
        spread = torch.linspace(0, len(ev_test) - 1, 6).long().tolist()  # over the classes
        images = view_tensors(ev_test, spread, pre.img_size)
        if first_seed and getattr(backbone, "is_vit", False) and images.shape[-1] == pre.img_size:
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


def _write(rows: list[dict], out: Path, dataset: str, name: str, protocols: dict, several: bool = False) -> None:
    base = ["pretrain", "seed", "steps", "minutes"]
    keys = base + [k for k in rows[0] if k not in base and k not in ("eval_train", "eval_test")]
    keys += ["eval_train", "eval_test"]
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: (round(r[k], 2) if isinstance(r[k], float) else r[k]) for k in keys} for r in rows)
    n_train, n_test = rows[0]["eval_train"], rows[0]["eval_test"]
    used = [get_protocol(p) for p in protocols]
    settings = "; ".join(f"{p.name} {_options_text(protocols[p.name])}" for p in used)
    lines = [
        f"Results on {dataset} ({n_train} train / {n_test} test images; frozen CLS / pooled features; "
        f"{settings}; every setting's figures in the CSV / JSON)",
        "",
    ]
    if several:  # each row's seeds: mean and spread first, every run below
        titles = {f"{p.name}_top1": f"{p.title} Acc@1" for p in used}
        lines += [*summary_markdown(summarize(rows), titles), "", "Every run:", ""]
    head = [f" {p.title} Acc@1 | Acc@5 |" + (f" {p.chosen} |" if p.chosen else "") for p in used]
    cols = sum(3 if p.chosen else 2 for p in used)
    lines += [
        f"| Pre-train |{' seed |' if several else ''} steps | train min |" + "".join(head),
        f"| --- |{' ---: |' if several else ''} ---: | ---: |" + " ---: |" * cols,
    ]
    for r in rows:
        cells = [
            f" {r[f'{p.name}_top1']:.2f} | {r[f'{p.name}_top5']:.2f} |"
            + (f" {r[f'{p.name}_{p.chosen}']:g} |" if p.chosen else "")
            for p in used
        ]
        seed = f" {r['seed']} |" if several else ""
        lines.append(f"| {r['pretrain']} |{seed} {r['steps']} | {r['minutes']:.1f} |" + "".join(cells))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def _options_text(options) -> str:
    """``k=10,20,100,200 temperature=0.07``: a protocol's options in one phrase."""
    return " ".join(
        f"{k}={','.join(f'{x:g}' for x in v) if isinstance(v, list) else v}" for k, v in to_dict(options).items()
    )
