import json
import os
import signal
import threading

import pytest
import torch

from sslkd import checkpoint as ckpt
from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.errors import DivergedError
from sslkd.train import Trainer, TrainingError
from sslkd.train.resume import check_compatible


def losses_of(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if "loss" in line]


def test_resume_continues_bit_for_bit(tmp_path, tiny):
    full_cfg = tiny.config("full")
    Trainer(full_cfg, tiny.data, progress=False).fit()
    full = losses_of(tmp_path / "full")
    assert len(full) == 8

    part_cfg = tiny.config("part", "train.max_steps=3")
    assert Trainer(part_cfg, tiny.data, progress=False).fit()["status"] == "max_steps"
    resumed_cfg = tiny.config("part")
    trainer = Trainer(resumed_cfg, tiny.data, progress=False)
    assert trainer.fit(resume="auto")["status"] == "finished"
    part = losses_of(tmp_path / "part")
    assert [r["step"] for r in part] == list(range(1, 9))
    for a, b in zip(full, part):
        assert a["loss"] == b["loss"] and a["teacher_entropy"] == b["teacher_entropy"], (a, b)
    final = ckpt.load(ckpt.list_checkpoints(tmp_path / "full")[0])
    again = ckpt.load(ckpt.list_checkpoints(tmp_path / "part")[0])
    for k, v in final["method"].items():
        assert torch.equal(v, again["method"][k]), k


def test_accumulation_steps_ema_and_centre_once_per_optimiser_step(tmp_path, tiny):
    cfg = tiny.config(".", "train.accum_steps=2")
    tr = Trainer(cfg, tiny.data, progress=False)
    calls = []
    orig = tr.method.on_optimizer_step
    tr.method.on_optimizer_step = lambda m: (calls.append(m), orig(m))
    batch = next(iter(tr.loader(0, 0)))[0]
    c0 = tr.method.loss_fn.center.clone()
    tr.train_step([batch, batch])
    assert len(calls) == 1 and tr.step == 1
    assert not torch.equal(tr.method.loss_fn.center, c0)
    # same data twice with accumulation == the batch once without: same centre, same teacher
    cfg1 = tiny.config("b")
    tr1 = Trainer(cfg1, tiny.data, progress=False)
    tr1.train_step([batch])
    torch.testing.assert_close(tr1.method.loss_fn.center, tr.method.loss_fn.center)


def test_gradient_caching_replays_drop_path_and_leaves_no_trace(tmp_path, tiny, monkeypatch):
    """iBOT & RKD-D under accumulation: pass 1 (no gradients) must not move BatchNorm statistics or
    centres, pass 2 must replay pass 1's drop path (else the method warns), and only the batch-level
    term differs from plain per-micro-batch accumulation."""
    import warnings

    import sslkd.train.engine as engine

    method = {
        "name": "ibot",
        "out_dim": 64,
        "hidden_dim": 64,
        "bottleneck_dim": 32,
        "use_bn_in_head": True,
        "distill": {"mode": "rkd-d", "combine": "add"},
    }
    over = [
        "train.accum_steps=2",
        "model.depth=2",
        "model.drop_path_rate=0.5",  # timm: block 2 drops 0.5
        "method=" + json.dumps(method),
    ]
    trainers = [Trainer(tiny.config(str(i), *over), tiny.data, progress=False) for i in range(2)]
    loader = iter(trainers[0].loader(0, 0))  # micro-batches of batch_size / accum_steps = 8 images
    half = [next(loader)[0], next(loader)[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.manual_seed(1)  # the same drop-path draws for both trainers
        cached, _ = trainers[0].train_step(half)
    with monkeypatch.context() as mp:  # plain accumulation: relations within each micro-batch
        mp.setattr(engine, "cache_batch_gradients", lambda *a, **k: None)
        torch.manual_seed(1)
        plain, _ = trainers[1].train_step(half)
    a, b = trainers[0].method, trainers[1].method
    for (name, x), y in zip(a.named_buffers(), b.buffers()):  # BN running stats, centres: one update each
        torch.testing.assert_close(x, y, msg=name)
    for k in ("cls", "patch", "rkd_patch"):
        torch.testing.assert_close(cached[k], plain[k])
    assert abs(float(cached["rkd_cls"]) - float(plain["rkd_cls"])) > 1e-4
    monkeypatch.setattr(engine, "set_rng_state", lambda *a: None)  # no replay: pass 2 draws other drop paths
    with pytest.warns(UserWarning, match="differ between the two passes"):
        trainers[0].train_step(half)


def test_checkpoints_atomic_pruned_and_corrupt_newest_skipped(tmp_path, tiny):
    cfg = tiny.config(".", "train.ckpt_every_steps=1", "train.keep_last=2")
    Trainer(cfg, tiny.data, progress=False).fit()
    found = ckpt.list_checkpoints(tmp_path)
    assert [p.name for p in found] == ["checkpoint-8.pt", "checkpoint-7.pt"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    found[0].write_bytes(found[0].read_bytes()[:1000])  # truncated newest
    with pytest.warns(UserWarning, match="checkpoint-8.pt"):
        path, state = ckpt.find_resumable(tmp_path)
    assert path.name == "checkpoint-7.pt" and state["step"] == 7


def test_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ckpt.CheckpointError, match="evil.pt"):
        ckpt.load(tmp_path / "evil.pt")
    (tmp_path / "config.yaml").write_text("seed: 0\n")  # a wrong file is named as such, not as a threat
    with pytest.raises(ckpt.CheckpointError, match="config.yaml: not a checkpoint file"):
        ckpt.load(tmp_path / "config.yaml")


def test_sigterm_writes_checkpoint_and_resumes(tmp_path, tiny):
    cfg = tiny.config(".")
    tr = Trainer(cfg, tiny.data, progress=False)
    orig = tr.train_step

    def step_then_signal(micro):
        out = orig(micro)
        if tr.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    tr.train_step = step_then_signal
    assert threading.current_thread() is threading.main_thread()
    summary = tr.fit()
    assert summary["status"] == "interrupted" and summary["step"] == 2
    assert ckpt.list_checkpoints(tmp_path)[0].name == "checkpoint-2.pt"
    tr2 = Trainer(cfg, tiny.data, progress=False)
    assert tr2.fit(resume="auto")["step"] == 8
    full_cfg = tiny.config("full")
    Trainer(full_cfg, tiny.data, progress=False).fit()
    assert [r["loss"] for r in losses_of(tmp_path)] == [r["loss"] for r in losses_of(tmp_path / "full")]


KILL_MID_WRITE = """
import os, signal, sys, torch
from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.train import Trainer
from sslkd import checkpoint as ckpt
real_save = torch.save
def dying_save(obj, f, *a, **k):
    if obj.get("step") == 3:  # the third checkpoint: half written, then the machine is gone
        f.write(b"x" * 5000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
ckpt.torch.save = dying_save
cfg = load_config(None, [f"output_dir={sys.argv[1]}", "train.ckpt_every_steps=1"], base=%r)
Trainer(cfg, get_dataset("synthetic", "train", img_size=16, num_samples=64), progress=False).fit()
"""


def test_kill_9_during_checkpoint_write_leaves_a_resumable_run(tmp_path, tiny):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", KILL_MID_WRITE % tiny.base, str(tmp_path)], capture_output=True, timeout=300
    )
    assert r.returncode == -signal.SIGKILL
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-2.pt", "checkpoint-1.pt"]
    assert [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # the torn write never took a real name
    cfg = tiny.config(".", "train.ckpt_every_steps=1")
    assert Trainer(cfg, tiny.data, progress=False).fit(resume="auto")["step"] == 8
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # torn temp files are cleaned up


def test_sigterm_to_the_process_group_with_loader_workers_checkpoints(tmp_path):
    """docker stop / Slurm / Ctrl-C signal the whole process group, loader workers included: the
    run must still checkpoint and exit cleanly (a worker dying first once crashed the loader)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    config = Path(__file__).parent.parent / "configs" / "dino" / "fashion_mnist_vit_tiny.yaml"
    cmd = [
        sys.executable,
        "-m",
        "sslkd",
        "pretrain",
        "--config",
        str(config),
        "--no-progress",
        "--set",
        "data.name=synthetic",
        "--set",
        "data.img_size=16",
        "--set",
        "model.depth=1",
        "--set",
        "data.num_workers=2",
        "--set",
        "train.max_steps=400",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.log_every=1",
        "--set",
        f"output_dir={tmp_path}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not ((tmp_path / "metrics.jsonl").is_file() and (tmp_path / "metrics.jsonl").stat().st_size):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in err and "interrupted at step" in err + out, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["status"] == "interrupted"
    assert proc.returncode == 128 + signal.SIGTERM  # a shell's 143, not Ctrl-C's 130
    assert ckpt.list_checkpoints(tmp_path)


@pytest.mark.parametrize("where", ["head", "backbone"])
def test_non_finite_loss_names_step_and_term(tmp_path, tiny, where):
    """A NaN in the head, or in the backbone (whose features the collapse metric's SVD reads: it
    must not raise first), stops the run naming the loss term and the step."""
    cfg = tiny.config(".", "train.log_every=1", "train.ckpt_every_steps=1")
    tr = Trainer(cfg, tiny.data, progress=False)
    orig = tr.train_step

    def poisoned(micro):
        if tr.step == 2:  # a NaN enters at the third step
            with torch.no_grad():
                net = tr.method.student
                (net.head.mlp[0].weight if where == "head" else net.backbone.vit.patch_embed.proj.weight).fill_(
                    float("nan")
                )
        return orig(micro)

    tr.train_step = poisoned
    with pytest.raises(DivergedError, match="'loss'.*step 3; .*checkpoint-2.pt \\(step 2\\) is kept"):
        tr.fit()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-2.pt", "checkpoint-1.pt"]
    state = ckpt.load(ckpt.list_checkpoints(tmp_path)[0])
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_last_layer_frozen_during_first_epoch(tmp_path, tiny):
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "train.freeze_last_layer=1",
            "train.warmup_epochs=0",
            "method.norm_last_layer=false",
        ],
        base=tiny.base,
    )
    tr = Trainer(cfg, tiny.data, progress=False)
    last = tr.method.student.head.last_layer.weight_v.clone()
    first = tr.method.student.head.mlp[0].weight.clone()
    batch = next(iter(tr.loader(0, 0)))[0]
    tr.train_step([batch])
    assert torch.equal(tr.method.student.head.last_layer.weight_v, last)
    assert not torch.equal(tr.method.student.head.mlp[0].weight, first)
    tr.state.step = tr.steps_per_epoch  # second epoch: trained
    tr.train_step([batch])
    assert not torch.equal(tr.method.student.head.last_layer.weight_v, last)


def test_one_epoch_run_trains_the_last_layer_after_the_default_freeze(tmp_path, tiny):
    """The default freeze is 1% of the run (DINO/iBOT: 1 of 100+ epochs), not one epoch: a run of
    one epoch (Table 1's) trains its last layer once the freeze ends."""
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "train.epochs=1",
            "train.warmup_epochs=0",
            "train.freeze_last_layer=null",
            "method.norm_last_layer=false",
        ],
        base=tiny.base,
    )
    tr = Trainer(cfg, tiny.data, progress=False)
    assert tr.freeze_steps == 1  # ceil(1% of the run's steps)
    last = tr.method.student.head.last_layer.weight_v.clone()
    batch = next(iter(tr.loader(0, 0)))[0]
    tr.train_step([batch])
    assert torch.equal(tr.method.student.head.last_layer.weight_v, last)
    tr.train_step([batch])  # step 2, still epoch 0
    assert not torch.equal(tr.method.student.head.last_layer.weight_v, last)
    # a freeze that covers the whole run is refused, naming the key
    cfg = tiny.config(".", "train.epochs=1", "train.freeze_last_layer=1")
    with pytest.raises(TrainingError, match="train.freeze_last_layer=1 epochs .* covers the whole run"):
        Trainer(cfg, tiny.data, progress=False)
    cfg = tiny.config(".", "train.epochs=1", "train.freeze_last_layer=0.5")
    assert Trainer(cfg, tiny.data, progress=False).freeze_steps == round(0.5 * tr.steps_per_epoch)


def test_per_param_clipping_bounds_each_tensor(tmp_path, tiny):
    cfg = tiny.config(".", "train.clip_mode=per_param", "train.clip_grad=1e-3")
    tr = Trainer(cfg, tiny.data, progress=False)
    seen = []
    orig = tr.optimizers[0].step

    def record(*a, **k):
        seen.extend(
            p.grad.norm().item() for g in tr.optimizers[0].param_groups for p in g["params"] if p.grad is not None
        )
        return orig(*a, **k)

    tr.optimizers[0].step = record
    tr.train_step([next(iter(tr.loader(0, 0)))[0]])
    assert seen and max(seen) <= 1e-3 * 1.0001 and sum(n > 0.9e-3 for n in seen) > 1


def test_resume_refuses_changed_settings_and_fresh_start_over_old_run(tmp_path, tiny):
    cfg = tiny.config(".", "train.max_steps=2")
    Trainer(cfg, tiny.data, progress=False).fit()
    changed = tiny.config(".", "train.batch_size=8")
    with pytest.raises(ckpt.CheckpointError, match=r"different train.batch_size; .*train.batch_size: 16 -> 8"):
        Trainer(changed, tiny.data, progress=False).fit(resume="auto")
    reseeded = tiny.config(".", "seed=1", "method.out_dim=32")
    with pytest.raises(ckpt.CheckpointError, match=r"different seed, method; .*seed: 0 -> 1; method.out_dim: 64 -> 32"):
        Trainer(reseeded, tiny.data, progress=False).fit(resume="auto")
    assert len(ckpt.list_checkpoints(tmp_path)) == 1  # the refused resumptions left the run as it was
    assert (
        load_config(tmp_path / "config.yaml").seed == 0 and load_config(tmp_path / "config.yaml").train.batch_size == 16
    )
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        Trainer(cfg, tiny.data, progress=False).fit(resume=None)


def test_local_crop_default_fits_the_patch_grid(tmp_path, tiny):
    digits = get_dataset("digits", "train")
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "aug.local_crops_number=2",
            "data.name=digits",
            "train.max_steps=1",
            "train.batch_size=16",
            "aug.local_crops_size=null",
        ],
        base=tiny.base,
    )
    assert cfg.aug.local_crops_size is None
    tr = Trainer(cfg, digits, progress=False)
    assert tr.transform.local_size % 4 == 0
    assert tr.fit()["step"] == 1


def test_time_budget_stops_with_a_checkpoint_and_is_kept_across_resumes(tmp_path, tiny):
    cfg = tiny.config(".", "train.time_budget_minutes=1e-5")
    summary = Trainer(cfg, tiny.data, progress=False).fit()
    assert summary["status"] == "time_budget" and summary["step"] == 1
    state = ckpt.load(ckpt.list_checkpoints(tmp_path)[0])
    assert state["step"] == 1 and state["train_seconds"] > 0
    again = Trainer(cfg, tiny.data, progress=False).fit(resume="auto")  # budget already spent: nothing more
    spent = round(state["train_seconds"], 1)
    assert (again["status"], again["step"], again["train_seconds"]) == ("time_budget", 1, spent)


def test_per_tensor_clipping_matches_clip_grad_norm_per_tensor():
    from sslkd.train.optim import clip_per_tensor

    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=g)) for _ in range(4)]
    for i, p in enumerate(params):
        p.grad = torch.randn(p.shape, generator=g) * (0.1 if i % 2 else 10.0)  # some clipped, some not
    expected = [p.grad.clone() for p in params]
    for e in expected:
        e.mul_(min(1.0, 3.0 / (e.norm().item() + 1e-6)))
    clip_per_tensor(params, 3.0)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e)
    assert params[0].grad.norm() <= 3.0 + 1e-5 and params[1].grad.norm() < 3.0


def test_compatibility_check_reads_keys_added_since_as_their_defaults(tmp_path, tiny):
    from sslkd.config import to_dict

    now = to_dict(load_config(None, ["method.name=ibot"], base=tiny.base))
    old = json.loads(json.dumps(now))
    del old["model"]["init_seed"], old["method"]["shared_head_teacher"]  # a checkpoint from before these keys
    check_compatible(old, now, tmp_path / "c.pt")
    changed = {**now, "model": {**now["model"], "init_seed": 5}}
    with pytest.raises(ckpt.CheckpointError, match=r"different model; .*\(model.init_seed: None -> 5\)"):
        check_compatible(old, changed, tmp_path / "c.pt")


def test_a_run_stored_before_a_behaviour_changing_default_keeps_its_behaviour(tmp_path, tiny):
    """Keys added with a new default that changes what a run does (2026-12-07) read, in a stored
    config that lacks them, as the behaviour the run was trained with: resuming such a run with
    today's defaults is refused naming them; evaluating it rebuilds the network it trained."""
    from sslkd.config import Config, from_dict, stored_config, to_dict

    now = to_dict(load_config(None, ["method.name=ibot", "method.distill.mode=rkd-d"], base=tiny.base))
    old = json.loads(json.dumps(now))
    for key in ("distance_rank", "teacher_temp", "student_temp"):
        del old["method"]["distill"][key]
    del old["method"]["patch_norm"]
    with pytest.raises(ckpt.CheckpointError, match=r"method.distill.distance_rank: 'far' -> 'near'"):
        check_compatible(old, now, tmp_path / "c.pt")
    mokd = to_dict(load_config(None, ["method.name=mokd"], base=tiny.base))
    del mokd["method"]["vit_pool"]
    assert from_dict(Config, stored_config(mokd)).method.vit_pool == "cls"
    assert (
        from_dict(
            Config, stored_config(to_dict(load_config(None, ["method.name=mokd"], base=tiny.base)))
        ).method.vit_pool
        == "mean"
    )


def _fake_clock(monkeypatch, seconds_per_step):
    """Training seconds on a fake clock: step ``n`` (1-based) costs ``seconds_per_step(n)``."""
    from sslkd.train import engine

    clock = [0.0]
    monkeypatch.setattr(engine.time, "perf_counter", lambda: clock[0])
    real_step = Trainer.train_step

    def timed_step(self, micro):
        clock[0] += seconds_per_step(self.step + 1)
        return real_step(self, micro)

    monkeypatch.setattr(Trainer, "train_step", timed_step)


def test_time_budget_plans_every_schedule_to_end_at_the_budget_and_resume_keeps_the_plan(tmp_path, tiny, monkeypatch):
    """A step costs 1 s on a fake clock: the rate measured over steps 3-8 plans 29 steps for the
    97% of the 22 s left (8 + 21), measured again over steps 8-13 (a tenth of the plan, at least
    5 steps) it stays 29; the learning-rate cosine ends at step 29 (not at train.epochs' 40) after
    a warm-up of 10% of the plan (warmup_epochs / epochs), the teacher temperature's warm-up (5 of
    10 epochs) takes half of it, plan.json says so, and a run stopped at step 12, before the second
    measurement, takes it after resuming and keeps the same schedule."""
    _fake_clock(monkeypatch, lambda step: 1.0)
    base = ["train.epochs=10", "train.time_budget_minutes=0.5", "train.log_every=1", "train.min_lr=0"]
    temps = ["method.warmup_teacher_temp=0.02", "method.teacher_temp=0.06", "method.warmup_teacher_temp_epochs=5"]
    whole = tiny.trainer("whole", *base, *temps)
    summary = whole.fit()
    assert (summary["status"], summary["step"], summary["planned_steps"]) == ("finished", 29, 29)
    lr = whole.schedules.lr
    assert len(lr) == 29 and lr[-1] < 0.01 * lr.max()  # the cosine reached its end
    assert lr.argmax() == 3  # warm-up: 1 of 10 configured epochs = 10% of 29 planned steps
    plan = json.loads((tmp_path / "whole" / "plan.json").read_text())
    assert plan["planned_steps"] == 29 and plan["bound_steps"] == 40 and plan["seconds_per_step"] == 1.0
    assert plan["steps_done"] == 29 and plan["train_seconds"] == 29.0
    assert (plan["refitted"], plan["refit_from"], plan["refit_step"], plan["first_planned_steps"]) == (True, 8, 13, 29)
    temp = {r["step"]: r["teacher_temp"] for r in losses_of(tmp_path / "whole")}
    # DINO's per-epoch warm-up: epoch 4 of 10 (of the plan's 2.9 steps each) reaches the end
    assert temp[12] < 0.06 and temp[13] == pytest.approx(0.06) and temp[1] == pytest.approx(0.02)

    cut = tiny.trainer("part", *base, "train.max_steps=12")
    assert cut.fit()["step"] == 12 and cut.plan.planned_steps == 29 and cut.plan.refit_pending
    resumed = tiny.trainer("part", *base)
    assert resumed.fit(resume="auto")["step"] == 29 and resumed.plan.planned_steps == 29
    assert (resumed.plan.refit_from, resumed.plan.refit_step) == (15, 20)  # measured anew after the restart
    lrs = {r["step"]: r["lr"] for r in losses_of(tmp_path / "whole")}
    assert {r["step"]: r["lr"] for r in losses_of(tmp_path / "part")} == lrs


def test_time_budget_measured_again_when_the_first_steps_were_fast(tmp_path, tiny, monkeypatch):
    """Steps 1-8 cost 1 s, the rest 2 s: the first plan (29 steps for 30 s) would be cut by the clock
    at step 19 with its schedules unfinished; measured again over steps 8-13 (2 s/step) it plans
    13 + 0.97 * 12 / 2 = 18 steps, which end inside the budget with every schedule finished."""
    _fake_clock(monkeypatch, lambda step: 1.0 if step <= 8 else 2.0)
    run = tiny.trainer("run", "train.epochs=10", "train.time_budget_minutes=0.5", "train.min_lr=0")
    summary = run.fit()
    assert (summary["status"], summary["step"], summary["train_seconds"]) == ("finished", 18, 28.0)
    assert len(run.schedules.lr) == 18 and run.schedules.lr[-1] < 0.01 * run.schedules.lr.max()
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert (plan["first_planned_steps"], plan["planned_steps"], plan["seconds_per_step"]) == (29, 18, 2.0)


def test_a_stored_plan_keeps_its_run_as_it_was_and_a_late_second_measurement_is_not_taken():
    """A plan stored before the second measurement and the warm-ups' share existed reads back
    without either (its run goes on as it started); a resumed run too close to its end to measure
    again over 8 steps keeps its plan rather than restart finished schedules."""
    from sslkd.train.budget import Plan

    old = Plan(**{"budget_seconds": 30.0, "seconds_per_step": 1.0, "probe_from": 3, "fitted_steps": 29,
                  "bound_steps": 40, "planned_steps": 29})  # fmt: skip
    assert not old.epochs_share and not old.refit_pending and not old.refit_fits(0)
    new = Plan(30.0, 1.0, 3, 29, 40, 29, refit_step=13, epochs_share=True)
    assert new.refit_fits(20) and not new.refit_fits(21)  # 21 + 3 warm + 5 timed = 29: the last step


def _planned_run(seconds_per_step, budget=100.0):
    """A loop driven by a BudgetPlanner on a fake clock, as the engine and the peer harness drive it:
    (steps done, training seconds, every plan adopted)."""
    from sslkd.train.budget import BudgetPlanner

    planner, total, step, seconds, plans = BudgetPlanner(budget, 10_000, 0), 10**9, 0, 0.0, []
    while step < total and seconds < budget:
        step, seconds = step + 1, seconds + seconds_per_step(step + 1)
        found = planner.observe(step, seconds)
        if step == planner.target:
            planner.adopt(found, step, seconds)
            total = found.planned_steps
            plans.append(found)
    return step, seconds, plans


def test_a_rate_that_drifts_later_re_plans_the_rest_and_a_steady_one_does_not():
    """1 s a step, then 1.2 s from step 30 on: the plan measured twice (97 steps) would take 110.6 s
    of a 100-s budget and be cut at step 89 with its schedules unfinished; the stretch of steps
    27-37 (a tenth of the plan) runs at 1.16 s/step, 16% off, and re-plans 37 + 0.97 * 61.4 / 1.16
    = 88 steps, which end inside the budget (99.8 s). A steady rate keeps its plan (no re-plan from
    the watched stretches)."""
    steps, seconds, plans = _planned_run(lambda step: 1.0 if step < 30 else 1.2)
    last = plans[-1]
    assert (last.replans, last.replan_from, last.replan_step, last.first_planned_steps) == (1, 27, 37, 97)
    assert last.seconds_per_step == pytest.approx(1.16) and "re-planned for 88 steps" in last.describe()
    assert steps == last.planned_steps == 88 and seconds <= 100.0  # finished, not cut
    steps, seconds, plans = _planned_run(lambda step: 1.0)
    assert {p.planned_steps for p in plans} == {97} and not plans[-1].replans and steps == 97
    assert len(plans) > 5  # the stretches were timed all along
