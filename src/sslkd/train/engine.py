"""The method-agnostic training engine.

AdamW with ``lr = base_lr * batch / 256``, linear warmup + cosine decay, cosine weight decay,
cosine EMA momentum, gradient clipping (global norm, or per tensor as iBOT's code does), the head's
last layer frozen at the start (1% of the run unless set), bf16 autocast, gradient accumulation
(EMA and centres
step once per optimiser step), checkpoints that make a resumed run continue bit for bit, JSONL +
TensorBoard metrics, a progress bar, kNN monitoring, and a clean stop on SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sslkd.checkpoint import list_checkpoints
from sslkd.config import Config, to_dict
from sslkd.data.base import ImageSource
from sslkd.device import autocast_dtype, environment
from sslkd.distributed import all_reduce_mean, any_process, from_main_process
from sslkd.errors import Aborted, DivergedError
from sslkd.methods import StepInfo
from sslkd.schedules import freeze_steps
from sslkd.train import fsdp
from sslkd.train.budget import BudgetPlanner, Plan, write_plan
from sslkd.train.build import join_processes, networks, plan_schedules, steps_per_epoch, wrap
from sslkd.train.gradcache import cache_batch_gradients, set_rng_state
from sslkd.train.inputs import ViewStream, build_views, count_bad_files, load_datasets
from sslkd.train.loggers import open_loggers
from sslkd.train.monitor import Monitor
from sslkd.train.optim import build_optimizers, clip_per_tensor, set_hparams
from sslkd.train.resume import Checkpointer
from sslkd.train.runlock import run_lock
from sslkd.train.runlog import RunLog
from sslkd.train.state import TrainState


class Trainer:
    """Pretrain ``cfg.method`` on ``cfg.data``; ``fit()`` runs (or resumes) to the end. Assembled
    from :mod:`sslkd.train.build`'s pieces; what changes as it trains is ``state``
    (:class:`~sslkd.train.state.TrainState`), written and restored by ``checkpointer``."""

    def __init__(
        self,
        cfg: Config,
        train_set: ImageSource | None = None,
        test_set: ImageSource | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg, self.out = cfg, Path(cfg.output_dir)
        self.procs = join_processes(cfg)
        self.rank, self.world, self.is_main, self.device = (
            self.procs.rank,
            self.procs.world,
            self.procs.is_main,
            self.procs.device,
        )
        if train_set is None:
            train_set, test_set = load_datasets(cfg, verbose=self.is_main)
        self.train_set = train_set
        self.monitor = Monitor(cfg, train_set, test_set, self.device)
        self.progress = progress and self.is_main
        t = cfg.train
        self.steps_per_epoch = steps_per_epoch(t, len(train_set), self.world)
        img_size = cfg.aug.global_crops_size or train_set.img_size
        method = networks(cfg, train_set.num_channels, img_size, self.out, self.procs)
        self.method, self.model, self.sharded = wrap(method, cfg, self.procs)
        views = build_views(cfg, train_set, self.method.crop_multiple(), self.method.paired_views)
        self.views = ViewStream(cfg, views, self.rank, self.world, self.device)
        self.transform = self.views.transform
        self.dtype = autocast_dtype(t.precision, self.device)
        if self.device.type == "cuda":  # fp32 runs: TF32 tensor cores (10-bit mantissa products, fp32 sums)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.state = TrainState(
            build_optimizers(self.method.optimizer_specs(), t.base_lr, self.device.type == "cuda"),
            torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16),
            resumed_world=self.world,
        )
        self.schedules = plan_schedules(t, t.epochs * self.steps_per_epoch, self.steps_per_epoch)
        has_last_layer = any(True for _ in self.method.last_layer_parameters())
        self.freeze_steps = freeze_steps(
            t.freeze_last_layer, self.steps_per_epoch, self.total_steps, t.max_steps, has_last_layer
        )
        data = {
            "num_channels": train_set.num_channels,
            "img_size": train_set.img_size,
            "mean": list(train_set.mean),
            "std": list(train_set.std),
            "dataset": cfg.data.name,
        }
        self.checkpointer = Checkpointer(self.out, cfg, self.method, self.procs, self.sharded, data)
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ state, for readers
    @property
    def step(self) -> int:
        return self.state.step

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self.state.optimizers

    @property
    def total_steps(self) -> int:
        return self.schedules.total

    @property
    def plan(self) -> Plan | None:
        return self.state.plan

    def save(self) -> Path:
        """Write a checkpoint of the run as it is now (:meth:`Checkpointer.save`)."""
        return self.checkpointer.save(self.state)

    # ------------------------------------------------------------------ training
    def loader(self, epoch: int, start: int) -> DataLoader:
        """Epoch ``epoch``'s loader from image ``start`` on (:meth:`ViewStream.loader`)."""
        return self.views.loader(epoch, start, self.state.resumed_world if start else self.world)

    def batches(self, epoch: int, start: int):
        """Epoch ``epoch``'s views from image ``start`` on, undecodable files counted."""
        read_by = self.state.resumed_world if start else self.world
        return self.views.batches(epoch, start, read_by, self._count_bad_files)

    def _count_bad_files(self, bad: list[str]) -> None:
        """Files the workers could not decode (and replaced): stop, or count them and say so."""
        self.state.skipped_files += count_bad_files(bad, self.cfg.data.on_corrupt, tqdm.write, self.device)

    def _apply_plan(self, plan: Plan, log: RunLog | None = None) -> None:
        """Every schedule spans ``plan.planned_steps`` from now on (the steps before the plan ran the
        provisional one: the same warm-up, a cosine a few steps in)."""
        self.state.plan = plan
        self.schedules = plan_schedules(self.cfg.train, plan.planned_steps, self.steps_per_epoch, planned=True)
        if log is not None:
            log.schedules = self.schedules.as_dict()
        if self.cfg.train.freeze_last_layer is None:  # the default: 1% of the run
            self.freeze_steps = math.ceil(0.01 * plan.planned_steps)

    def progress_epochs(self) -> float:
        """Where the run is, in epochs of its schedules: the epochs of data seen, or under a time
        budget's plan the share of ``train.epochs`` done (a method's warm-ups keep their share)."""
        if self.plan is None or not self.plan.epochs_share:
            return self.step / self.steps_per_epoch
        return self.step * self.cfg.train.epochs / self.total_steps

    def set_hparams(self, step: int) -> None:
        """The learning rate and weight decay of step ``step`` into every optimiser."""
        set_hparams(self.optimizers, float(self.schedules.lr[step]), float(self.schedules.wd[step]))

    def clip_gradients(self) -> None:
        """Clip by ``train.clip_grad``: each trained model's global norm, or each tensor's."""
        t = self.cfg.train
        if t.clip_grad <= 0:
            return
        for group in self.method.clip_groups():  # one per trained model (MOKD trains two)
            params = [p for p in group if p.grad is not None]
            if t.clip_mode == "norm":
                torch.nn.utils.clip_grad_norm_(params, t.clip_grad, foreach=True)
            else:  # iBOT/DINO reference: each tensor clipped to norm clip_grad on its own
                clip_per_tensor(params, t.clip_grad)

    def train_step(self, micro_batches: list[list[torch.Tensor]]) -> tuple[dict, dict]:
        """One optimiser step over ``accum_steps`` micro-batches of views. Returns summed
        (averaged) detached losses and metrics."""
        t = self.cfg.train
        info = StepInfo(
            self.step,
            self.progress_epochs(),
            self.total_steps,
            t.epochs,
            accum_steps=len(micro_batches),
            rank=self.rank,
            world_size=self.world,
        )
        self.set_hparams(self.step)
        losses_sum: dict[str, torch.Tensor] = {}
        metrics_sum: dict[str, torch.Tensor] = {}

        def autocast():
            return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

        # losses over the whole batch (CLS-level RKD) stay exact under accumulation: gradient caching
        cached = (
            cache_batch_gradients(self.method, micro_batches, info, self.device, autocast)
            if len(micro_batches) > 1 and self.method.has_batch_losses()
            else None
        )
        for micro, views in enumerate(micro_batches):
            info.micro = micro
            views = [v.to(self.device, non_blocking=True) for v in views]
            last_micro = micro == len(micro_batches) - 1
            # DDP/FSDP average gradients across processes once, on the last micro-batch
            fsdp.set_gradient_sync(self.method, last_micro)
            sync = contextlib.nullcontext() if last_micro or self.model is self.method else self.model.no_sync()
            with sync:
                with autocast():
                    if cached is None:
                        losses, metrics = self.model(views, info)
                    else:  # replay the micro-batch's random state: the forward of pass 1 again
                        set_rng_state(cached[micro]["rng"], self.device)
                        losses, metrics = self.model(views, info, cached[micro])
                self.state.scaler.scale(losses["loss"] / len(micro_batches)).backward()
            for k, v in losses.items():
                losses_sum[k] = losses_sum.get(k, 0) + v.detach().float() / len(micro_batches)
            for k, v in metrics.items():
                metrics_sum[k] = metrics_sum.get(k, 0) + v.detach().float() / len(micro_batches)
        if self.step < self.freeze_steps:
            for p in self.method.last_layer_parameters():
                p.grad = None
        for opt in self.optimizers:
            self.state.scaler.unscale_(opt)
        self.clip_gradients()
        for opt in self.optimizers:
            self.state.scaler.step(opt)
        self.state.scaler.update()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.method.on_optimizer_step(float(self.schedules.momentum[self.step]))
        self.state.step += 1
        # the whole batch's losses on every process (the same non-finite check and logs everywhere)
        return all_reduce_mean(losses_sum), all_reduce_mean(metrics_sum)

    def _check_finite(self, losses: dict[str, torch.Tensor], step: int) -> None:
        for name, value in losses.items():
            if not math.isfinite(float(value)):
                kept = list_checkpoints(self.out)
                where = f"{kept[0]} (step {kept[0].stem.split('-')[1]}) is kept" if kept else "no checkpoint yet"
                raise DivergedError(
                    f"non-finite loss term '{name}' = {float(value)} at step {step}; {where}; "
                    f"lower train.base_lr or raise train.warmup_epochs, then resume or start anew"
                )

    def _handle_signal(self, signum, frame) -> None:  # noqa: ARG002
        """First SIGINT/SIGTERM: finish the step, checkpoint, exit. A second one aborts at once."""
        if self._stop_signal is not None:
            raise Aborted(signum, self.step)
        self._stop_signal = signum
        if self.is_main:  # os.write: a buffered print may be mid-write in the interrupted frame
            again = "Ctrl-C again" if signum == signal.SIGINT else "a second SIGTERM"
            msg = f"\nstopping after this step, writing a checkpoint ({again} to abort without one)\n"
            os.write(sys.stderr.fileno(), msg.encode())

    def fit(self, resume: str | None = None) -> dict[str, Any]:
        """Train to ``train.epochs`` (or ``train.max_steps``, or until ``train.time_budget_minutes`` of
        training, summed over resumptions). Returns a summary dict with ``status`` in
        {"finished", "interrupted", "max_steps", "time_budget"}."""
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        with run_lock(self.out, self.is_main):  # one process per run folder
            return self._fit(resume)

    def _fit(self, resume: str | None) -> dict[str, Any]:
        t = self.cfg.train
        resumed = self.checkpointer.resume(resume, self.state)  # first: a refused one leaves the files alone
        if self.plan is not None:  # the checkpoint's time-budget plan, kept
            self._apply_plan(self.plan)
        self._write_run_files()
        loop = _Loop(self, self._open_log())
        if resumed:
            loop.bar.write(f"resumed from {resumed} at step {self.step}")
        if t.time_budget_minutes and (self.plan is None or self.plan.watches_after(self.step)):  # measure, then plan
            loop.planner = BudgetPlanner(loop.budget, t.epochs * self.steps_per_epoch, self.step, self.plan)
        if any_process(self.state.train_seconds >= loop.budget):  # resumed with its budget spent: not one more step
            loop.status = "time_budget"
        old_handlers = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.method.train()
            loop.mark = time.perf_counter()
            while self.step < loop.end and loop.status == "finished":
                self._epoch(loop)
            self._close(loop)
        finally:
            for s, h in old_handlers.items():  # first: a signal while the loggers finish is the caller's
                signal.signal(s, h)
            loop.bar.close()
            loop.log.close()
        if self.plan is not None and self.is_main:
            seconds = self.state.train_seconds
            write_plan(self.out, self.plan, status=loop.status, steps_done=self.step, train_seconds=seconds)
        return {
            **loop.last,
            "status": loop.status,
            "step": self.step,
            "planned_steps": self.total_steps,
            "train_seconds": round(self.state.train_seconds, 1),
            "skipped_files": self.state.skipped_files,
            **({"signal": self._stop_signal} if loop.status == "interrupted" else {}),
        }

    def _write_run_files(self) -> None:
        if self.is_main:
            (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            # torchrun's GROUP_WORLD_SIZE: its launchers, one per node
            nodes = os.environ.get("GROUP_WORLD_SIZE", "1")
            env = {**environment(self.device), "processes": str(self.world), "nodes": nodes}
            (self.out / "env.json").write_text(json.dumps(env, indent=1))

    def _open_log(self) -> RunLog:
        cfg = self.cfg
        return RunLog(
            self.out,
            self.is_main,
            self.steps_per_epoch,
            self.schedules.as_dict(),
            self._check_finite,
            open_loggers(cfg.train.loggers, self.out, to_dict(cfg), cfg.name) if self.is_main else [],
            start_step=self.step,
        )

    def _epoch(self, loop: _Loop) -> None:
        """The rest of the current epoch, or until the loop stops (``loop.status``, the end)."""
        t = self.cfg.train
        epoch, start = divmod(self.step, self.steps_per_epoch)
        micro: list[list[torch.Tensor]] = []
        for views in self.batches(epoch, start * t.batch_size):
            micro.append(views)
            if len(micro) < t.accum_steps:
                continue
            losses, metrics = self.train_step(micro)
            micro = []
            if not self._after_step(loop, losses, metrics):
                break
        if loop.status == "finished" and self.step % self.steps_per_epoch == 0:
            loop.log.flush()  # finiteness checked before any save
            self._end_of_epoch(self.step // self.steps_per_epoch, loop.log, loop.last)

    def _after_step(self, loop: _Loop, losses: dict, metrics: dict) -> bool:
        """Clock, budget plan, logs, checkpoint after a step; False when the loop stops here."""
        t = self.cfg.train
        now = time.perf_counter()  # wall clock, data loading and saving included
        self.state.train_seconds, loop.mark = self.state.train_seconds + now - loop.mark, now
        if loop.planner is not None:
            self._measure(loop)
        loop.seen += t.batch_size
        loop.log.add(self.step - 1, losses, {**metrics, "skipped_files": torch.tensor(self.state.skipped_files)})
        loop.bar.update(1)
        if self.step % t.log_every == 0 or self.step == loop.end:
            rate = loop.seen / max(time.perf_counter() - loop.tic, 1e-9)
            loop.last = loop.log.flush(rate)
            loop.bar.set_postfix(loss=f"{loop.last['loss']:.4f}", img_s=f"{rate:.0f}")
            loop.tic, loop.seen = time.perf_counter(), 0
        if t.ckpt_every_steps and self.step % t.ckpt_every_steps == 0:
            loop.log.flush()
            self.save()
        if self.step >= loop.end:
            return False
        if any_process(self.state.train_seconds >= loop.budget):
            loop.status = "time_budget"
        elif any_process(self._stop_signal is not None):  # torchrun signals every rank, not at once
            loop.status = "interrupted"
        return loop.status == "finished"

    def _measure(self, loop: _Loop) -> None:
        """The time budget's step rate measured; at the end of a measurement, the plan in force."""
        planner, seconds = loop.planner, self.state.train_seconds
        plan = planner.observe(self.step, seconds)
        if self.step != planner.target:
            return
        plan = from_main_process(plan)  # every process follows the main one's clock
        changed = plan != self.plan
        if changed:
            self._apply_plan(plan, loop.log)
        planner.adopt(plan, self.step, seconds)
        loop.end = loop.bar.total = self.last_step()
        if planner.done:
            loop.planner = None
        if self.is_main and changed:
            loop.bar.write(plan.describe())

    def _close(self, loop: _Loop) -> None:
        """The last records and checkpoint of a run that stopped (``loop.status``) or ended."""
        t = self.cfg.train
        loop.log.flush()
        if loop.status == "time_budget":
            path = self.save() if self.state.saved_step != self.step else self.out / f"checkpoint-{self.step}.pt"
            loop.bar.write(f"time budget of {t.time_budget_minutes} min reached at step {self.step}: wrote {path}")
        if loop.status == "interrupted":
            path = self.save()
            loop.bar.write(f"interrupted at step {self.step}: wrote {path}; resume with --resume auto")
        elif self.step >= loop.end:
            if t.max_steps is not None and loop.end < self.total_steps:
                loop.status = "max_steps"
            if self.state.saved_step != self.step:  # the same on every process: save() is collective
                self.save()

    def last_step(self) -> int:
        """The last step of this run: the plan's, cut by ``train.max_steps``."""
        t = self.cfg.train
        return self.total_steps if t.max_steps is None else min(self.total_steps, t.max_steps)

    def _end_of_epoch(self, epoch: int, log: RunLog, last: dict) -> None:
        if self.monitor.due(epoch):
            res = self.monitor(self.method.eval_backbone("teacher"))
            last.update(res)
            top1 = {f"eval/{k}": v for k, v in res.items() if k.endswith("_top1")}
            log.record({"step": self.step, "epoch": epoch, **res}, top1)
            self.method.train()
        if not self.cfg.train.ckpt_every_steps or self.step % self.cfg.train.ckpt_every_steps:
            self.save()


class _Loop:
    """What the training loop carries between steps: where it ends, its clock, budget, logs."""

    def __init__(self, trainer: Trainer, log: RunLog) -> None:
        t = trainer.cfg.train
        self.log, self.end = log, trainer.last_step()
        self.status, self.last = "finished", {}
        self.budget = t.time_budget_minutes * 60 if t.time_budget_minutes else float("inf")
        self.planner: BudgetPlanner | None = None
        self.tic, self.seen, self.mark = time.perf_counter(), 0, time.perf_counter()
        self.bar = tqdm(
            total=self.end,
            initial=trainer.step,
            disable=not trainer.progress,
            unit="step",
            dynamic_ncols=True,
            desc=f"{trainer.cfg.method.name} {trainer.cfg.model.backbone}",
        )
