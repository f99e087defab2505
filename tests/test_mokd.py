import json

import numpy as np
import pytest
import torch

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.methods import StepInfo, build_method
from sslkd.models import THead
from sslkd.train import Trainer

MOKD = {
    "device": "cpu",
    "seed": 3,
    "data": {"name": "synthetic", "img_size": 16},
    "aug": {"local_crops_number": 1, "local_crops_size": 8},
    "model": {"backbone": "vit_tiny", "patch_size": 4, "depth": 1, "drop_path_rate": 0.0},
    "method": {
        "name": "mokd",
        "out_dim": 32,
        "hidden_dim": 32,
        "bottleneck_dim": 16,
        "thead_depth": 1,
        "thead_width": 64,
        "center_momentum": 0.5,
        "model2": {"backbone": "resnet18", "drop_path_rate": 0.0},
    },
    "train": {
        "epochs": 1,
        "batch_size": 16,
        "warmup_epochs": 0,
        "log_every": 1,
        "freeze_last_layer": 0,
        "max_steps": 3,
        "clip_grad": 3.0,
    },
}


def H(target_logits, student_logits, center, t_temp, s_temp):
    """Cross-entropy of softmax((t - c)/t_temp) against softmax(s/s_temp), batch mean, float64."""
    t = (target_logits.double() - center.double()) / t_temp
    pt = torch.softmax(t, -1)
    log_ps = torch.log_softmax(student_logits.double() / s_temp, -1)
    return float(-(pt * log_ps).sum(-1).mean())


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(None, ["output_dir=/tmp/unused"], base=MOKD)
    method = build_method(cfg, 3, 16)
    for loss in (*method.mlp_loss, *method.thead_loss):  # non-zero centres, as after some steps
        loss.center.normal_()
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)] + [torch.randn(4, 3, 8, 8, generator=g)]
    return cfg, method, views


def test_each_term_matches_the_papers_equations(setup):
    cfg, method, views = setup
    method.train()
    for bb in (method.student[1].backbone, method.teacher[1].backbone):
        bb.eval()  # BatchNorm: the same statistics in both passes
    losses, _ = method(views, StepInfo(0, 0.0, 10, 1))
    m = cfg.method
    tt, st = m.warmup_teacher_temp, m.student_temp  # tau' at epoch 0 of its warmup
    with torch.no_grad():
        T = [[net(v) for v in views[:2]] for net in method.teacher]
        S = [[net(v, with_thead=k < 2) for k, v in enumerate(views)] for net in method.student]
    c_m = [loss.center for loss in method.mlp_loss]
    c_t = [loss.center for loss in method.thead_loss]
    for i, j in ((0, 1), (1, 0)):
        n = str(i + 1)
        # L_sm: DINO multi-crop, teacher global view a/b against every other student view
        pairs = [(a, b) for a in range(2) for b in range(3) if a != b]
        sm = np.mean([H(T[i][a]["m"], S[i][b]["m"], c_m[i], tt, st) for a, b in pairs])
        # L_cm = H(m'_b(j), m_a)/2 + H(m'_a(j), m_b)/2: the global views only (Eq. 5, Algorithm 1)
        cm = 0.5 * (H(T[j][1]["m"], S[i][0]["m"], c_m[j], tt, st) + H(T[j][0]["m"], S[i][1]["m"], c_m[j], tt, st))
        # L_st = H(t'_b, t_a)/2 + H(t'_a, t_b)/2
        st_ = 0.5 * (H(T[i][1]["t"], S[i][0]["t"], c_t[i], tt, st) + H(T[i][0]["t"], S[i][1]["t"], c_t[i], tt, st))
        # L_ct: target for student view v = j's EMA T-Head on j's tokens of the other view, searched by
        # model i's pooled view-v feature (Eq. 6-7)
        ct = 0.0
        for v in range(2):
            with torch.no_grad():
                target = method.teacher[j].thead(T[j][1 - v]["tokens"], S[i][v]["tokens"].mean(1))
            ct += 0.5 * H(target, S[i][v]["t"], c_t[j], tt, st)
        for name, want in (("sm", sm), ("cm", cm), ("st", st_), ("ct", ct)):
            assert float(losses[name + n]) == pytest.approx(want, rel=1e-5), name + n
    lam = (m.lambda1, m.lambda2)
    total = sum(
        float(losses[f"s{k}{i + 1}"]) + lam[i] * float(losses[f"c{k}{i + 1}"]) for i in range(2) for k in ("m", "t")
    )
    assert float(losses["loss"].detach()) == pytest.approx(total, rel=1e-6)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_vit_mlp_head_reads_the_pooled_tokens_and_export_gives_that_feature(pool, tmp_path):
    """Sec. 3.2: the tokens are globally average-pooled before the MLP-Head (``vit_pool: mean``);
    the evaluated backbone gives that feature, and so does the plain timm model of its export."""
    from sslkd.export import export, load_export

    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"method.vit_pool={pool}"], base=MOKD)
    trainer = Trainer(cfg, get_dataset("synthetic", "train", img_size=16, num_samples=32), progress=False)
    trainer.fit()
    method = trainer.method.eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    net = method.student[0]
    with torch.no_grad():
        feature, tokens = net.backbone.forward_features(x)
        want = tokens.mean(1) if pool == "mean" else net.backbone.vit.forward_features(x)[:, 0]
        torch.testing.assert_close(feature, want)
        torch.testing.assert_close(net(x)["m"], net.head(want))
        export(tmp_path / "run", tmp_path / "export", model=1)
        plain = load_export(tmp_path / "export")
        torch.testing.assert_close(plain(x), method.eval_backbone("teacher", 1)(x), rtol=1e-4, atol=1e-5)


def test_model1_loss_does_not_reach_model2(setup):
    cfg, method, views = setup
    for i in range(2):
        method.zero_grad()
        per_model, _, _ = method.model_losses(views, StepInfo(0, 0.0, 10, 1))
        per_model[i].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student[i].parameters())
        assert all(p.grad is None or not p.grad.any() for p in method.student[1 - i].parameters())
        assert all(p.grad is None for p in method.teacher.parameters())


def test_search_token_changes_output_and_is_not_pooled():
    torch.manual_seed(0)
    head = THead(in_dim=8, num_tokens=5, out_dim=6, width=16, depth=2, search_dim=4)
    tokens, search = torch.randn(3, 5, 8), torch.randn(3, 4)
    seen = {}
    head.blocks.register_forward_hook(lambda mod, inp, out: seen.update(x=out))
    with_search = head(tokens, search)
    x = seen["x"]
    assert x.shape[1] == 6  # the search token went through the blocks
    torch.testing.assert_close(with_search, head.fc(head.norm(x[:, 1:].mean(1))))
    assert not torch.allclose(with_search, head.fc(head.norm(x.mean(1))))
    assert not torch.allclose(with_search, head(tokens))


def test_lambda0_without_theads_is_two_independent_dino_runs(tmp_path):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=64)
    off = [
        "method.lambda1=0",
        "method.lambda2=0",
        "method.self_thead=false",
        "method.cross_thead=false",
        "method.optimizer2=adamw",
        "method.vit_pool=cls",
    ]  # DINO trains both with AdamW, and its ViT's head reads the CLS token
    cfg = load_config(None, [f"output_dir={tmp_path / 'mokd'}", *off], base=MOKD)
    Trainer(cfg, data, progress=False).fit()
    mokd = [
        json.loads(line) for line in (tmp_path / "mokd" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
    ]
    dino_method = {k: MOKD["method"][k] for k in ("out_dim", "hidden_dim", "bottleneck_dim", "center_momentum")}
    # model 2 is initialised from seed + 1 (as a DINO run with model.init_seed = seed + 1), same data
    for n, model in ((1, MOKD["model"]), (2, {**MOKD["method"]["model2"], "init_seed": MOKD["seed"] + 1})):
        run = tmp_path / f"dino{n}"
        base = {**MOKD, "model": model, "method": {"name": "dino", **dino_method}}
        Trainer(load_config(None, [f"output_dir={run}"], base=base), data, progress=False).fit()
        dino = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
        assert len(dino) == len(mokd) == 3
        for a, b in zip(dino, mokd):
            assert b[f"sm{n}"] == pytest.approx(a["dino"], rel=1e-5), (n, a["step"])


def test_two_models_of_one_architecture_start_apart():
    """Same-architecture pairs (the paper's ViT-S + ViT-S, R50 + R50) are two networks, not twins."""
    cfg = load_config(
        None, ["method.model2.backbone=vit_tiny", "method.model2.depth=1", "method.model2.patch_size=4"], base=MOKD
    )
    method = build_method(cfg, 3, 16)
    a, b = method.student[0].backbone.state_dict(), method.student[1].backbone.state_dict()
    assert a.keys() == b.keys()
    assert all(not torch.equal(a[k], b[k]) for k in a if a[k].dtype.is_floating_point and a[k].std() > 0)
    same = load_config(
        None,
        [
            "method.model2.backbone=vit_tiny",
            "method.model2.depth=1",
            "method.model2.patch_size=4",
            f"method.model2.init_seed={MOKD['seed']}",
        ],
        base=MOKD,
    )
    twins = build_method(same, 3, 16)  # asked for explicitly: the same initialisation
    torch.testing.assert_close(twins.student[0].backbone.state_dict(), twins.student[1].backbone.state_dict())


def test_checkpoint_holds_both_models_and_eval_picks_one(tmp_path):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=64)
    cfg = load_config(None, [f"output_dir={tmp_path}", "train.max_steps=2"], base=MOKD)
    trainer = Trainer(cfg, data, progress=False)
    # the paper's recipe: AdamW for the ViT (model 1), SGD at sgd_lr for the ResNet (model 2)
    assert [type(o).__name__ for o in trainer.optimizers] == ["AdamW", "SGD"]
    trainer.fit()
    sgd = trainer.optimizers[1].param_groups[0]
    assert sgd["lr"] == pytest.approx(float(trainer.schedules.lr[1]) * 0.1 / cfg.train.base_lr)
    assert sgd["weight_decay"] == 1e-4
    state = torch.load(sorted(tmp_path.glob("checkpoint-*.pt"))[-1], weights_only=True)
    assert isinstance(state["optimizer"], list) and len(state["optimizer"]) == 2
    from sslkd.pretrained import load_pretrained

    # model 1 is the ViT, model 2 the ResNet, each with the weights the checkpoint holds
    one, two = load_pretrained(tmp_path, model=1), load_pretrained(tmp_path, model=2)
    assert one.backbone.is_vit and not two.backbone.is_vit
    final = state["method"]
    for k, v in two.backbone.state_dict().items():
        assert torch.equal(v, final[f"teacher.1.backbone.{k}"]), k
    with pytest.raises(ValueError, match="models 1 and 2"):
        load_pretrained(tmp_path, model=3)
    for model in ("1", "2"):
        assert (
            main(["eval", "knn", "--checkpoint", str(tmp_path), "--dataset", "synthetic", "--model", model, "--json"])
            == 0
        )


# ---- analyses (Table 9, Fig. 4, Fig. 5) ------------------------------------------------------------


def test_prediction_consistency_counts_agreement():
    from sslkd.eval.analysis import prediction_consistency

    g = torch.Generator().manual_seed(0)
    train = torch.randn(40, 8, generator=g)
    labels = torch.arange(40) % 4
    test, test_labels = train[:10] + 0.01, labels[:10]
    same = prediction_consistency(train, test, train, test, labels, test_labels)
    assert same["consistency"] == 100.0 and same["top1_a"] == same["top1_b"]
    noise = prediction_consistency(
        train, test, torch.randn(40, 8, generator=g), torch.randn(10, 8, generator=g), labels, test_labels
    )
    assert noise["consistency"] < 100.0 and noise["both_right"] <= min(noise["top1_a"], noise["top1_b"])


def test_attention_distance_grows_with_reach():
    from sslkd.eval.analysis import attention_distance, cnn_receptive_distance
    from sslkd.models import build_backbone

    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", 16, 4, 3, depth=2)
    images = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    d = attention_distance(vit, images, (0.5,) * 3, (0.25,) * 3)
    assert d.shape == (2, 3) and (d > 0).all() and (d < 16 * 1.5).all()
    cnn = build_backbone("resnet18", 32, small_stem=True)
    for m in cnn.modules():  # timm zero-inits each block's last BN: residual branches would be silent
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    r = cnn_receptive_distance(cnn, torch.randn(2, 3, 32, 32))
    assert r.shape[0] >= 4 and all(r[i + 1, 0] > r[i, 0] for i in range(len(r) - 1))  # deeper stages see further


def test_analyze_commands(tmp_path, capsys):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=64)
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "train.max_steps=1"], base=MOKD)
    Trainer(cfg, data, progress=False).fit()
    run = str(tmp_path / "run")
    assert main(["analyze", "consistency", run, run + "@2", "--dataset", "synthetic"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= res["both_right"] <= min(res["top1_a"], res["top1_b"]) and 0 <= res["consistency"] <= 100
    assert (
        main(
            [
                "analyze",
                "tsne",
                run + "@2",
                "--dataset",
                "synthetic",
                "--classes",
                "0",
                "1",
                "2",
                "--out",
                str(tmp_path / "tsne.png"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "analyze",
                "attention-distance",
                run,
                run + "@2",
                "--dataset",
                "synthetic",
                "--out",
                str(tmp_path / "dist.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "tsne.png").stat().st_size > 5000 and (tmp_path / "dist.png").stat().st_size > 5000
    capsys.readouterr()
    assert (
        main(
            [
                "attention",
                run + "@1",
                "--dataset",
                "synthetic",
                "--indices",
                "0",  # model 1: the ViT
                "--out",
                str(tmp_path / "att.png"),
            ]
        )
        == 0
    )
    assert main(["attention", run + "@2", "--dataset", "synthetic", "--out", str(tmp_path / "att2.png")]) == 1
    assert "this model is a CNN" in capsys.readouterr().err
    assert main(["export", run + "@x", "--out", str(tmp_path / "exp")]) == 1
    assert "RUN@<model number>" in capsys.readouterr().err


def test_table7_configs_switch_terms_and_compare_evaluates_both_models():
    from pathlib import Path

    from sslkd.experiments.compare import label_of, models_of

    rows = sorted((Path(__file__).parents[1] / "configs" / "mokd" / "table7").glob("*.yaml"))
    terms = []
    for path in rows:
        cfg = load_config(path)
        m = cfg.method
        terms.append((m.self_mlp, m.cross_mlp, m.self_thead, m.cross_thead))
        assert models_of(cfg) == [(1, "resnet18"), (2, "vit_tiny")] and label_of(cfg) == cfg.name
    # the paper's rows: L_sm; + L_cm; + L_st; + L_ct
    assert terms == [
        (True, False, False, False),
        (True, True, False, False),
        (True, True, True, False),
        (True, True, True, True),
    ]


def test_configs_follow_the_papers_training_recipe():
    """MOKD's Suppl. "Training": tau' warmed up 0.04 -> 0.07 over the first 30 of 100 epochs, ViT
    AdamW base lr 3e-4 (ResNet SGD 0.1); a warmup under one epoch keeps that share in a short run."""
    from pathlib import Path

    from sslkd.schedules import warmup_temp

    root = Path(__file__).resolve().parents[1] / "configs" / "mokd"
    for path in [root / "cifar10_resnet18_vit_tiny.yaml", *sorted((root / "table7").glob("*.yaml"))]:
        cfg = load_config(str(path))
        m = cfg.method
        # A.1's augmentations (no grayscale, no solarize) and DINO's per-tensor clipping
        assert (cfg.aug.grayscale_p, cfg.aug.solarize_p, cfg.train.clip_mode) == (0, 0, "per_param"), path
        assert (m.warmup_teacher_temp, m.teacher_temp, m.warmup_teacher_temp_epochs) == (0.04, 0.07, 30), path
        assert cfg.train.epochs == 100 and cfg.train.base_lr == 3e-4 and m.sgd_lr == 0.1, path

        def temp(epoch, m=m):
            return warmup_temp(m.warmup_teacher_temp, m.teacher_temp, m.warmup_teacher_temp_epochs, epoch)

        assert temp(0) == 0.04 and temp(29.5) == 0.07
        m.warmup_teacher_temp_epochs = 0.3  # a one-epoch run: the same 30%, per step
        assert temp(0.15) == pytest.approx(0.055) and temp(0.3) == 0.07


def test_fractional_warmup_of_several_epochs_never_overshoots():
    from sslkd.schedules import warmup_temp

    assert [warmup_temp(0.04, 0.07, 2.5, e) for e in (0, 1.5, 2.2, 3)] == pytest.approx([0.04, 0.055, 0.07, 0.07])
