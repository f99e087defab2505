"""Engine against engine (issue 28, Part 2): iBOT & KD trained by sslkd and by a loop built from
lightly's public API, under one recipe at a time, for the same wall-clock budget, scored by the
same code (``sslkd.experiments.compare.Scorer``: weighted kNN best of k = 10/20/100/200, a linear
probe with its rate swept on held-out training images, a logistic regression).

A recipe is a set of overrides of ``configs/ibot/cifar10_vit_tiny_kd.yaml``; both engines read
every number from the resulting config, so the two sides of a row cannot drift apart:

- ``sslkd``: the config as it is (warm-up 10% then cosine lr from base_lr x B / 256 to min_lr,
  cosine weight decay 0.04 -> 0.4 without biases and norms, per-tensor clipping at 3, EMA
  0.99 -> 0.995, the teacher a copy of the student, BatchNorm head 512 / 256 / 2048, last layer
  frozen for 1% of the steps, teacher temperatures 0.04 (CLS) and 0.07 (patches));
- ``lightly``: lightly's examples/pytorch/ibot.py (1.5.26 / 1.6.0): a constant lr of 1e-3 at
  batch 64, weight decay cosine 0.04 -> 0.4 on every parameter, no clipping, EMA cosine
  0.992 -> 1, both teacher temperatures warmed 0.04 -> 0.07 over 60% of the steps (30 of its 50
  epochs), head 2048 / 256 / 8192 without BatchNorm and with a learnt last-layer norm, no
  last-layer freeze, the teacher's head initialised apart from the student's.

Both recipes keep the config's data: ViT-Tiny/8 at 32 px, batch 64, 2 global (0.4-1) + 2 local
16 px (0.1-0.4) crops made as whole batches by sslkd's ``BatchMultiCrop`` (the same views for
both engines at a seed; lightly's example takes 10 local crops of 224 px images), masks on half
the images (10-50% of the patches), drop path 0.1, student temperature 0.1, bf16 where the CPU
has it. Each run plans its schedules into its minutes (``sslkd.train.budget``: the step rate
measured twice); ``--lr-scale`` multiplies the recipe's learning rates (the sweep: 0.5, 1, 2).
What one engine cannot follow stays its own and is written in the result (``engine_own``): sslkd
copies the teacher's head from the student's, has no LayerScale (lightly's example: 1e-5), no
uniform drop path and no decay of biases and norms; it warms a temperature counted in epochs as
DINO does (one value per epoch of its plan, the end reached an epoch before the warm-up's last,
50% of the plan under the lightly recipe; lightly's loop: linear per step to 60%); lightly's iBOT
patch centre is the mean of the masked tokens (sslkd's: of all the teacher's); sslkd's clock
includes its checkpoint at each epoch's end.

    python benchmarks/peer_engines.py run --engine lightly --recipe sslkd --seed 0 --minutes 30
    bash benchmarks/peer_engines.sh      # the matrix, one run at a time; finished runs are skipped
    python benchmarks/peer_engines.py table   # mean +- std over seeds, per engine, recipe, lr

One JSON per run in ``--results`` (default ``benchmarks/results/peer_engines``): the scores, the
steps and their plan, the commit, versions (torch, timm, lightly, sslkd) and the machine. Needs
``pip install -e ".[bench]"`` (lightly).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import numpy as np
import timm
import torch
from lightly.loss import DINOLoss, IBOTPatchLoss
from lightly.models.modules import DINOProjectionHead, MaskedVisionTransformerTIMM
from lightly.models.utils import (
    get_weight_decay_parameters,
    random_block_mask,
    update_drop_path_rate,
    update_momentum,
)
from lightly.utils.scheduler import cosine_schedule, linear_warmup_schedule
from torch import nn

from sslkd.api import pretrain
from sslkd.config import Config, load_config
from sslkd.data.registry import labelled_splits
from sslkd.device import autocast_dtype, environment, resolve_device, tune_cpu_malloc
from sslkd.experiments.compare import DEFAULT_KS, Scorer, eval_settings, scoring_protocols, source_commit
from sslkd.experiments.seeds import summarize
from sslkd.pretrained import load_pretrained
from sslkd.train.budget import BudgetPlanner
from sslkd.train.inputs import ViewStream, build_views, load_datasets

CONFIG = "configs/ibot/cifar10_vit_tiny_kd.yaml"
EPOCHS = 10  # train.epochs: only an upper bound under a time budget (warm-ups keep their share of it)
# checkpoints at epoch ends only (the lightly loop writes none; sslkd's saves stay in its clock)
COMMON = [f"train.epochs={EPOCHS}", "data.subset_fraction=1.0", "eval.knn_every=0", "train.log_every=50",
          "train.ckpt_every_steps=0"]  # fmt: skip
RECIPES = {
    "sslkd": ["train.warmup_epochs=1"],  # the config's 10% warm-up (0.1 of its 1 epoch)
    "lightly": [
        "method.out_dim=8192", "method.hidden_dim=2048", "method.bottleneck_dim=256",
        "method.use_bn_in_head=false", "method.norm_last_layer=false",
        "train.base_lr=4e-3", "train.min_lr=1e-3", "train.warmup_epochs=0",  # 1e-3 at batch 64, constant
        "train.weight_decay=0.04", "train.weight_decay_end=0.4", "train.clip_grad=0",
        "train.momentum_teacher=0.992", "train.momentum_teacher_end=1.0", "train.freeze_last_layer=0",
        "method.warmup_teacher_temp=0.04", "method.teacher_temp=0.07",
        "method.warmup_teacher_patch_temp=0.04", "method.teacher_patch_temp=0.07",
        f"method.warmup_teacher_temp_epochs={0.6 * EPOCHS:g}",
    ],
}  # fmt: skip
# what lightly's loop does under each recipe where sslkd's config has no key for it
LIGHTLY_STYLE = {
    "sslkd": {"teacher_head": "copy", "drop_path": "linear", "decay_norms_and_biases": False, "layer_scale": None},
    "lightly": {"teacher_head": "random", "drop_path": "uniform", "decay_norms_and_biases": True, "layer_scale": 1e-5},
}
SSLKD_OWN = {"teacher_head": "copy", "drop_path": "linear", "decay_norms_and_biases": False, "layer_scale": None}
PROTOCOLS = ("knn", "linear", "logreg")


def run_config(recipe: str, lr_scale: float, seed: int, minutes: float, out: Path, root: str) -> Config:
    """The config both engines read: the recipe's overrides, its learning rates scaled."""
    cfg = load_config(CONFIG, COMMON + RECIPES[recipe] + [f"data.root={root}"])
    t = cfg.train
    return load_config(
        CONFIG,
        COMMON + RECIPES[recipe] + [
            f"data.root={root}", f"seed={seed}", f"output_dir={out}", f"train.time_budget_minutes={minutes}",
            f"train.base_lr={t.base_lr * lr_scale:g}", f"train.min_lr={t.min_lr * lr_scale:g}",
        ],
    )  # fmt: skip


def lightly_lr(step: int, total: int, cfg: Config) -> float:
    """lightly's ``CosineWarmupScheduler`` factor times the peak: ``(step + 1) / warm`` over the
    warm-up's share of the run, then a cosine to ``min_lr``."""
    t = cfg.train
    peak = t.base_lr * t.batch_size / 256
    warm = round(t.warmup_epochs / t.epochs * total)
    if step < warm:
        return peak * (step + 1) / warm
    return cosine_schedule(step - warm, total - warm, peak, t.min_lr)


class CLS(nn.Module):
    """The CLS token of a lightly ``MaskedVisionTransformerTIMM`` (what sslkd's protocols embed)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode(x)[:, 0]


class LightlyIBOT:
    """iBOT from lightly's modules, losses and helpers, as its example builds it, with the
    numbers of ``cfg`` and the choices of ``style`` (``LIGHTLY_STYLE``)."""

    def __init__(self, cfg: Config, style: dict, size: int, device: torch.device) -> None:
        m, patch, rate = cfg.method, cfg.model.patch_size, cfg.model.drop_path_rate
        torch.manual_seed(cfg.init_seed)
        linear = style["drop_path"] == "linear"  # timm's ramp 0 -> rate over the blocks (the teacher: eval)
        vit = timm.create_model(
            "vit_tiny_patch16_224", img_size=size, patch_size=patch, num_classes=0, dynamic_img_size=True,
            pos_embed="learn", drop_path_rate=rate if linear else 0.0, init_values=style["layer_scale"],
        )  # fmt: skip
        self.teacher = MaskedVisionTransformerTIMM(vit=vit, antialias=False, pos_embed_initialization="skip")
        self.student = copy.deepcopy(self.teacher)
        if not linear:  # lightly's "uniform": every block drops at the rate
            update_drop_path_rate(self.student.vit, drop_path_rate=rate, mode="uniform")

        def head(**kw) -> nn.Module:
            return DINOProjectionHead(
                vit.embed_dim, m.hidden_dim, m.bottleneck_dim, m.out_dim, batch_norm=m.use_bn_in_head, **kw
            )

        self.student_head = head(norm_last_layer=m.norm_last_layer)
        if style["teacher_head"] == "copy":  # weight_norm's tensors refuse deepcopy: a new head, loaded
            self.teacher_head = head(norm_last_layer=m.norm_last_layer)
            self.teacher_head.load_state_dict(self.student_head.state_dict())
        else:
            self.teacher_head = head()
        self.teacher.requires_grad_(False).eval()
        # the head stays in training mode, as sslkd's teacher: its BatchNorm normalises each batch
        self.teacher_head.requires_grad_(False)
        for net in (self.teacher, self.teacher_head, self.student, self.student_head):
            net.to(device)
        every = style["decay_norms_and_biases"]
        decay, rest = get_weight_decay_parameters([self.student, self.student_head], decay_norm=every, decay_bias=every)
        self.params = decay + rest
        groups = [{"params": decay}] + ([{"params": rest, "weight_decay": 0.0}] if rest else [])
        self.opt = torch.optim.AdamW(groups)
        self.dino = DINOLoss(m.out_dim, student_temp=m.student_temp, center_momentum=m.center_momentum).to(device)
        self.ibot = IBOTPatchLoss(m.out_dim, student_temp=m.student_temp, center_momentum=m.center_momentum2).to(device)
        self.cfg, self.device, self.grid = cfg, device, size // patch
        self.dtype = autocast_dtype(cfg.train.precision, device)

    def step(self, views: list[torch.Tensor], lr: float, wd: float, momentum: float, temps, freeze: bool):
        """One optimiser step; returns the loss and the teacher's CLS entropy (nats, after centring and
        sharpening: ln out_dim = a teacher collapsed to uniform, as sslkd's ``teacher_entropy``)."""
        m, t = self.cfg.method, self.cfg.train
        glob, loc = torch.cat(views[:2]), views[2:]
        b, h = len(glob), self.grid
        lo, hi = m.mask_ratio
        block = random_block_mask(
            size=(b, h, h), batch_mask_ratio=m.mask_prob, min_image_mask_ratio=lo, max_image_mask_ratio=hi,
            min_num_masks_per_block=4 if h * h >= 64 else 1,  # lightly's 4 does not fit a 4 x 4 grid
            min_block_aspect_ratio=m.mask_min_aspect, device=self.device,
        )  # fmt: skip
        mask = torch.zeros(b, h * h + 1, dtype=torch.bool, device=self.device)
        mask[:, 1:] = block.flatten(1)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.param_groups[0]["weight_decay"] = wd  # the second group (norms, biases) keeps 0
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            with torch.no_grad():
                t_tokens = self.teacher.encode(glob)
                t_cls, t_masked = self.teacher_head(t_tokens[:, 0]), self.teacher_head(t_tokens[mask])
            s_tokens = self.student.encode(glob, mask=mask)
            s_cls, s_masked = self.student_head(s_tokens[:, 0]), self.student_head(s_tokens[mask])
            s_loc = [self.student_head(self.student.encode(x)[:, 0]) for x in loc]
        student = torch.cat([s_cls, *s_loc]).float().chunk(2 + len(loc))
        with torch.no_grad():
            target = torch.softmax((t_cls.float() - self.dino.center) / temps[0], dim=-1)
            entropy = float(-(target * target.clamp_min(1e-12).log()).sum(-1).mean())
        loss = m.lambda1 * self.dino(t_cls.float().chunk(2), list(student), teacher_temp=temps[0])
        loss = loss + m.lambda2 * self.ibot(t_masked.float(), s_masked.float(), block, teacher_temp=temps[1])
        loss.backward()
        if freeze:
            for p in self.student_head.last_layer.parameters():
                p.grad = None
        if t.clip_grad > 0:
            if t.clip_mode == "norm":
                torch.nn.utils.clip_grad_norm_(self.params, t.clip_grad)
            else:  # DINO's clip_gradients: each tensor on its own
                for p in self.params:
                    if p.grad is not None:
                        torch.nn.utils.clip_grad_norm_(p, t.clip_grad)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        update_momentum(self.student, self.teacher, momentum)
        update_momentum(self.student_head, self.teacher_head, momentum)
        return float(loss.detach()), entropy


def train_lightly(cfg: Config, recipe: str, progress: bool) -> tuple[nn.Module, dict]:
    """Train lightly's iBOT for ``cfg.train.time_budget_minutes``; its teacher's CLS and a summary."""
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.train.tune_malloc:
        tune_cpu_malloc()
    random.seed(cfg.seed)
    train_set, _ = load_datasets(cfg, verbose=True)
    model = LightlyIBOT(cfg, LIGHTLY_STYLE[recipe], train_set.img_size, device)
    torch.manual_seed(cfg.seed)
    views = ViewStream(cfg, build_views(cfg, train_set, cfg.model.patch_size, False), 0, 1, device)
    t, m = cfg.train, cfg.method
    per_epoch = len(train_set) // t.batch_size
    total = t.epochs * per_epoch  # until the budget's plan
    budget = t.time_budget_minutes * 60
    planner, plan = BudgetPlanner(budget, total, 0), None
    step, seconds, epoch, loss, entropy = 0, 0.0, 0, float("nan"), float("nan")
    mark = time.perf_counter()
    while step < total and seconds < budget:
        for batch in views.batches(epoch, 0):
            temp_warm = round(m.warmup_teacher_temp_epochs / t.epochs * total)
            temps = (
                linear_warmup_schedule(step, temp_warm, m.warmup_teacher_temp, m.teacher_temp),
                linear_warmup_schedule(step, temp_warm, m.warmup_teacher_patch_temp, m.teacher_patch_temp),
            )
            freeze_steps = math.ceil(0.01 * total) if t.freeze_last_layer is None else t.freeze_last_layer * per_epoch
            loss, entropy = model.step(
                batch,
                lightly_lr(step, total, cfg),
                cosine_schedule(step, total, t.weight_decay, t.weight_decay_end),
                cosine_schedule(step, total, t.momentum_teacher, t.momentum_teacher_end),
                temps,
                step < freeze_steps,
            )
            step += 1
            now = time.perf_counter()
            seconds, mark = seconds + now - mark, now
            found = planner.observe(step, seconds)
            if step == planner.target:
                changed, plan = found != plan, found
                planner.adopt(plan, step, seconds)
                total = plan.planned_steps
                if changed:
                    print(plan.describe(), flush=True)
            if progress and step % t.log_every == 0:
                print(json.dumps({"step": step, "of": total, "loss": round(loss, 4),
                                  "minutes": round(seconds / 60, 2)}), flush=True)  # fmt: skip
            if step >= total or seconds >= budget:
                break
        epoch += 1
    summary = {"steps": step, "planned_steps": total, "train_seconds": round(seconds, 1), "last_loss": loss,
               "teacher_entropy": entropy}  # fmt: skip
    return CLS(model.teacher).eval(), {**summary, "plan": None if plan is None else asdict(plan)}


def train_sslkd(cfg: Config, progress: bool) -> tuple[nn.Module, dict]:
    """Train with sslkd's engine (resuming a run folder left by an interrupted try)."""
    run = pretrain(cfg, progress=progress, resume="auto")
    s = run.summary
    if s["status"] not in ("finished", "time_budget"):
        raise SystemExit(f"{cfg.output_dir}: {s['status']} at step {s['step']}; run the same command to resume")
    plan_file = Path(cfg.output_dir) / "plan.json"
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else None
    summary = {"steps": s["step"], "planned_steps": s["planned_steps"], "train_seconds": s["train_seconds"],
               "last_loss": s.get("loss"), "teacher_entropy": s.get("teacher_entropy"), "plan": plan}  # fmt: skip
    return load_pretrained(cfg.output_dir, "teacher").backbone, summary


def run_one(args) -> Path:
    name = f"{args.engine}_{args.recipe}_lr{args.lr_scale:g}_seed{args.seed}"
    result = Path(args.results) / f"{name}.json"
    if result.is_file():
        print(f"{result} exists: not run again")
        return result
    cfg = run_config(args.recipe, args.lr_scale, args.seed, args.minutes, Path(args.runs) / name, args.root)
    commit = source_commit()
    if args.engine == "sslkd":
        backbone, summary = train_sslkd(cfg, args.progress)
    else:
        backbone, summary = train_lightly(cfg, args.recipe, args.progress)
    protocols = scoring_protocols(cfg, PROTOCOLS, args.linear_epochs, 0)
    train, test = labelled_splits("imagefolder", root=args.root, img_size=cfg.data.img_size)
    size = cfg.aug.global_crops_size or train.img_size
    settings = eval_settings("imagefolder", args.root, size, protocols, args.eval_train, None)
    scores = Scorer(train, test, cfg, settings, protocols, False).scores(backbone)
    record = {
        "engine": args.engine, "recipe": args.recipe, "lr_scale": args.lr_scale, "seed": args.seed,
        "minutes": args.minutes, "peak_lr": cfg.train.base_lr * cfg.train.batch_size / 256,
        "min_lr": cfg.train.min_lr, **summary, **scores,
        "engine_own": LIGHTLY_STYLE[args.recipe] if args.engine == "lightly" else SSLKD_OWN,
        "overrides": COMMON + RECIPES[args.recipe], "config": CONFIG, "knn_ks": DEFAULT_KS,
        "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"),
        "environment": {**environment(resolve_device(cfg.device)), "lightly": version("lightly")},
    }  # fmt: skip
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("engine", "recipe", "lr_scale", "seed", "steps", "knn_top1")}))
    return result


def table(args) -> str:
    """Markdown: each (recipe, engine, lr scale) row's mean +- std over its seeds (``summarize``)."""
    records = [json.loads(p.read_text()) for p in sorted(Path(args.results).glob("*_seed*.json"))]
    if not records:
        raise SystemExit(f"no results in {args.results}")
    rows = [{**r, "pretrain": f"{r['recipe']} recipe, {r['engine']} engine, lr x{r['lr_scale']:g}",
             "minutes": r["train_seconds"] / 60} for r in records]  # fmt: skip
    rows.sort(key=lambda r: (r["recipe"], r["engine"], r["lr_scale"], r["seed"]))
    lines = [
        "| recipe, engine, lr | seeds | steps | kNN top-1 | linear top-1 | logreg top-1 |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for s in summarize(rows):
        cells = [
            f"{s[m + '_mean']:.2f} ± {s[m + '_std']:.2f} ({' / '.join(f'{v:.2f}' for v in s[m + '_all'])})"
            if m + "_mean" in s else ""
            for m in ("knn_top1", "linear_top1", "logreg_top1")
        ]  # fmt: skip
        steps = " / ".join(str(r["steps"]) for r in rows if r["pretrain"] == s["pretrain"])
        seeds = ",".join(str(x) for x in s["seeds"])
        lines.append(f"| {s['pretrain']} | {seeds} | {steps} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and score one run (skipped when its result exists)")
    r.add_argument("--engine", choices=["sslkd", "lightly"], required=True)
    r.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    r.add_argument("--lr-scale", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--minutes", type=float, default=30.0)
    r.add_argument("--root", default="../shared/data/cifar10")
    r.add_argument("--runs", default="runs/peer_engines", help="training folders")
    r.add_argument("--eval-train", type=int, default=10000, help="training images the probes learn from")
    r.add_argument("--linear-epochs", type=int, default=100)
    r.add_argument("--progress", action="store_true")
    for q in (r, sub.add_parser("table", help="the table of every result")):
        q.add_argument("--results", default="benchmarks/results/peer_engines")
    args = p.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    run_one(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    main()
