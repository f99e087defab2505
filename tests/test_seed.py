import argparse
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sslkd import checkpoint as ckpt
from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.errors import TeacherError
from sslkd.losses import EmbeddingRegressionLoss, FeatureQueue, SEEDLoss
from sslkd.teachers import load_teacher
from sslkd.train import Trainer

TEACHER_RUN = {
    "device": "cpu",
    "data": {"name": "synthetic", "img_size": 16},
    "model": {"backbone": "vit_tiny", "patch_size": 4, "depth": 1},
    "method": {"name": "dino", "out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32},
    "train": {"epochs": 1, "batch_size": 16, "max_steps": 2, "warmup_epochs": 0},
}


def seed_loss_naive(s, t, q, tau_s, tau_t):
    """SEED's equation, one image at a time, float64."""
    s, t, q = (np.asarray(x, dtype=np.float64) for x in (s, t, q))
    total = 0.0
    for i in range(len(s)):
        si, ti = s[i] / np.linalg.norm(s[i]), t[i] / np.linalg.norm(t[i])
        bank = [ti] + [qk / np.linalg.norm(qk) for qk in q]
        ls = np.array([si @ d / tau_s for d in bank])
        lt = np.array([ti @ d / tau_t for d in bank])
        pt = np.exp(lt - lt.max()) / np.exp(lt - lt.max()).sum()
        log_ps = ls - ls.max() - np.log(np.exp(ls - ls.max()).sum())
        total += -(pt * log_ps).sum()
    return total / len(s)


@pytest.mark.parametrize("tau_t", [0.01, 1e-4, 0.5])
def test_seed_loss_matches_formula(tau_t):
    g = torch.Generator().manual_seed(0)
    s, t, q = (torch.randn(n, 8, generator=g, dtype=torch.float64) for n in (6, 6, 11))
    got = SEEDLoss(0.2, tau_t)(s, t, q).item()
    np.testing.assert_allclose(got, seed_loss_naive(s, t, q, 0.2, tau_t), rtol=1e-6)


def test_seed_loss_tends_to_infonce_with_teacher_as_positive():
    g = torch.Generator().manual_seed(1)
    s, t, q = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(20, 8, generator=g)
    sn, tn, qn = F.normalize(s, dim=-1), F.normalize(t, dim=-1), F.normalize(q, dim=-1)
    logits = torch.cat([(sn * tn).sum(-1, keepdim=True), sn @ qn.T], 1) / 0.2
    infonce = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(SEEDLoss(0.2, 1e-6)(s, t, q), infonce, rtol=1e-5, atol=1e-6)


def test_seed_loss_no_gradient_to_teacher_or_queue():
    s = torch.randn(4, 8, requires_grad=True)
    t = torch.randn(4, 8, requires_grad=True)
    q = torch.randn(9, 8, requires_grad=True)
    SEEDLoss()(s, t, q).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None and q.grad is None


def test_regression_baselines():
    s, t = torch.randn(4, 8), torch.randn(4, 8)
    sn, tn = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    torch.testing.assert_close(EmbeddingRegressionLoss("l2")(s, t), ((sn - tn) ** 2).sum(-1).mean())
    torch.testing.assert_close(EmbeddingRegressionLoss("cosine")(s, t), 1 - (sn * tn).sum(-1).mean())
    assert EmbeddingRegressionLoss("l2")(t * 3, t).item() < 1e-6


def test_queue_fifo_wraps_for_any_size():
    q = FeatureQueue(5, 2)
    batches = [F.normalize(torch.randn(2, 2), dim=-1) for _ in range(3)]
    for b in batches:
        q.enqueue(b)
    # rows 0,1 <- batch 0; 2,3 <- batch 1; 4 <- batch 2 row 0, then wrap: 0 <- batch 2 row 1
    torch.testing.assert_close(q.queue[1], batches[0][1])
    torch.testing.assert_close(q.queue[2:4], batches[1])
    torch.testing.assert_close(q.queue[4], batches[2][0])
    torch.testing.assert_close(q.queue[0], batches[2][1])
    assert int(q.ptr) == 1
    big = F.normalize(torch.randn(7, 2), dim=-1)  # larger than the queue: keeps its newest rows
    q.enqueue(big)
    np.testing.assert_allclose(sorted(q.queue.sum(1).tolist()), sorted(big[-5:].sum(1).tolist()), rtol=1e-6)


# ---- teachers from other projects' checkpoint layouts -------------------------------------------------


def _vit(img=32, patch=8, name="vit_tiny_patch16_224"):
    torch.manual_seed(0)
    return timm.create_model(name, img_size=img, patch_size=patch, num_classes=0, depth=2).eval()


def _layouts(sd):
    head = {"head.mlp.0.weight": torch.randn(4, 4), "head.last_layer.weight_g": torch.ones(4, 1)}
    return {
        "dino": {
            "teacher": {
                **{f"module.backbone.{k}": v for k, v in sd.items()},
                **{f"module.{k}": v for k, v in head.items()},
            },
            "student": {},
        },
        "ibot": {
            "teacher": {
                **{f"backbone.{k}": v for k, v in sd.items()},
                "backbone.masked_embed": torch.zeros(192),
                **head,
            }
        },
        "mocov3": {
            "state_dict": {
                **{f"module.base_encoder.{k}": v * 0 for k, v in sd.items()},
                **{f"module.momentum_encoder.{k}": v for k, v in sd.items()},
                "module.momentum_encoder.head.0.weight": torch.randn(3, 3),
                "module.predictor.0.weight": torch.randn(3, 3),
            }
        },
        "mae": {"model": {**sd, "mask_token": torch.zeros(1, 1, 192), "decoder_embed.weight": torch.randn(2, 2)}},
        "timm": dict(sd),
    }


@pytest.mark.parametrize("layout", ["dino", "ibot", "mocov3", "mae", "timm", "safetensors"])
def test_external_layouts_load_onto_timm_model(tmp_path, layout):
    src = _vit()
    sd = src.state_dict()
    path = tmp_path / "w.pth"
    if layout == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(_layouts(sd)[layout], path)
    teacher, report = load_teacher(path, arch="vit_tiny", patch_size=8, img_size=32, depth=2)
    expected = {"dino": "dino/ibot", "ibot": "dino/ibot", "safetensors": "timm"}.get(layout, layout)
    assert report.layout == expected and not report.missing and report.loaded == len(sd)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = src.forward_features(x)[:, 0]
    torch.testing.assert_close(teacher(x), ref, rtol=1e-5, atol=1e-5)
    if layout == "ibot":
        assert "masked_embed" in report.unexpected


def test_mocov2_resnet_and_strict_missing_keys(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=0, global_pool="").eval()
    sd = src.state_dict()
    obj = {
        "state_dict": {
            **{f"module.encoder_q.{k}": v for k, v in sd.items()},
            "module.encoder_q.fc.0.weight": torch.randn(2, 2),
            "module.queue": torch.randn(2, 2),
        }
    }
    torch.save(obj, tmp_path / "moco.pth.tar")
    teacher, report = load_teacher(tmp_path / "moco.pth.tar", arch="resnet18", which="student")
    assert report.layout == "mocov2" and not report.missing and not report.unexpected
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), src.forward_features(x).mean((2, 3)), rtol=1e-5, atol=1e-5)
    del obj["state_dict"]["module.encoder_q.layer4.1.bn2.weight"]
    torch.save(obj, tmp_path / "moco_cut.pth.tar")
    with pytest.raises(TeacherError, match="Missing in the file: layer4.1.bn2.weight"):
        load_teacher(tmp_path / "moco_cut.pth.tar", arch="resnet18")


def test_mismatched_architecture_and_unsafe_files_are_errors(tmp_path):
    small = timm.create_model("vit_small_patch16_224", img_size=32, patch_size=8, num_classes=0, depth=1)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    with pytest.raises(TeacherError, match=r"does not match.*cls_token \(1, 1, 384\) vs model \(1, 1, 192\)"):
        load_teacher(tmp_path / "small.pth", arch="vit_tiny", patch_size=8, img_size=32)
    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "pickle.pth")
    with pytest.raises(TeacherError, match="does not unpickle"):
        load_teacher(tmp_path / "pickle.pth", arch="vit_tiny")
    with pytest.raises(TeacherError, match="architecture"):
        load_teacher(tmp_path / "small.pth")
    with pytest.raises(TeacherError, match="not found"):
        load_teacher(tmp_path / "nope.pth", arch="vit_tiny")


def test_position_embedding_resampled_for_another_grid(tmp_path):
    torch.save(_vit(img=32, patch=8).state_dict(), tmp_path / "w.pth")
    teacher, report = load_teacher(tmp_path / "w.pth", arch="vit_tiny", patch_size=8, img_size=48, depth=2)
    assert report.resampled == ["pos_embed"]
    assert teacher.backbone.vit.pos_embed.shape[1] == 1 + 36


def test_timm_hub_without_network_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants  # read at import: an earlier import would make the test wait on the network

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TeacherError, match="network"):
        load_teacher("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k")


# ---- SEED end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    cfg = load_config(None, [f"output_dir={out}"], base=TEACHER_RUN)
    Trainer(cfg, get_dataset("synthetic", "train", img_size=16, num_samples=64), progress=False).fit()
    return out


def test_sslkd_checkpoint_teacher_with_head(teacher_run):
    t, report = load_teacher(teacher_run, features="head")
    assert t.out_dim == 32 and "sslkd dino" in report.layout
    t2, _ = load_teacher(teacher_run)
    assert t2.out_dim == 192
    # SEED's default: the head where the checkpoint has one (the teacher's output embedding)
    from sslkd.methods.seed import SEEDConfig

    t3, report3 = load_teacher(teacher_run, features=SEEDConfig().teacher_features)
    assert t3.out_dim == 32 and "features: projection head bottleneck" in str(report3)
    assert not any(p.requires_grad for p in t.parameters())
    t.train()
    assert not t.training


def test_seed_trains_from_cli_teacher_frozen_and_resumes(tmp_path, teacher_run):
    cfg = tmp_path / "seed.yaml"
    cfg.write_text(
        "device: cpu\ndata: {name: synthetic, img_size: 16}\n"
        "model: {backbone: vit_tiny, patch_size: 4, depth: 1, drop_path_rate: 0.0}\n"
        "method: {name: seed, queue_size: 50, teacher_features: head}\n"
        "train: {epochs: 4, batch_size: 32, base_lr: 5.0e-3, warmup_epochs: 0, log_every: 1}\n"
        f"output_dir: {tmp_path / 'run'}\n"
    )
    before = {k: v.clone() for k, v in load_teacher(teacher_run, features="head")[0].state_dict().items()}
    assert (
        main(
            [
                "distill",
                "seed",
                "--teacher",
                str(teacher_run),
                "--config",
                str(cfg),
                "--no-progress",
                "--set",
                "train.max_steps=20",
            ]
        )
        == 0
    )
    assert main(["distill", "seed", "--teacher", str(teacher_run), "--config", str(cfg), "--no-progress"]) == 0
    recs = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"seed"' in line
    ]
    assert [r["step"] for r in recs] == list(range(1, len(recs) + 1))
    assert np.mean([r["seed"] for r in recs[-5:]]) < np.mean([r["seed"] for r in recs[:5]]) - 0.1
    state = ckpt.load(ckpt.list_checkpoints(tmp_path / "run")[0])["method"]
    for k, v in before.items():
        assert torch.equal(state[f"teacher.{k}"], v), k
    # the student is what evaluation reads, without the teacher file
    assert main(["eval", "knn", "--checkpoint", str(tmp_path / "run"), "--dataset", "synthetic", "--json"]) == 0


def test_seed_configs_use_moco_v2_augmentation():
    """SEED's view is MoCo v2's (blur p = 0.5, saturation 0.4, crop scale 0.2-1), not DINO's
    always-blurred first global crop."""
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "seed").glob("*.yaml")):
        cfg = load_config(str(path))
        a = cfg.aug
        assert a.blur_p[0] == 0.5 and a.saturation == 0.4 and tuple(a.global_crops_scale) == (0.2, 1.0), path
        assert cfg.method.teacher_features == "auto", path


def test_student_initialisation_and_crops_do_not_depend_on_the_teacher(tmp_path):
    """Two different frozen ViT teachers (patch 8 and 16): the student CNN starts from the same
    weights, and its crops are not rounded to a teacher's patch size (teachers resize)."""
    students = []
    for i, (patch, depth) in enumerate(((8, 1), (16, 2))):
        vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=patch, depth=depth, num_classes=0)
        save_file(vit.state_dict(), str(tmp_path / f"t{i}.safetensors"))
        base = {
            "device": "cpu",
            "data": {"name": "synthetic", "img_size": 28},
            "aug": {"local_crops_number": 2, "local_crops_size": 14},
            "model": {"backbone": "resnet18"},
            "method": {
                "name": "seed",
                "teacher": str(tmp_path / f"t{i}.safetensors"),
                "teacher_arch": "vit_tiny",
                "teacher_patch_size": patch,
                "teacher_img_size": 32,
                "queue_size": 64,
            },
            "train": {"epochs": 1, "batch_size": 16},
        }
        data = get_dataset("synthetic", "train", img_size=28, num_samples=32)
        tr = Trainer(load_config(None, [f"output_dir={tmp_path / str(i)}"], base=base), data, progress=False)
        assert tr.method.crop_multiple() == 1 and tr.transform.local_size == 14
        students.append(tr.method.student.backbone.state_dict())
    assert all(torch.equal(students[0][k], students[1][k]) for k in students[0])


def test_mocov2_projection_head_is_the_teachers_output(tmp_path):
    """SEED distils MoCo v2's 128-d MLP output (the query encoder's, as SEED's code loads
    ``encoder_q``), not the pooled features."""
    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=0, global_pool="").eval()
    mlp = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 128))
    sd = {}
    for enc, scale in (("encoder_q", 1.0), ("encoder_k", 0.0)):  # the query encoder is the teacher
        sd.update({f"module.{enc}.{k}": v for k, v in src.state_dict().items()})
        sd.update({f"module.{enc}.fc.{k}": v * scale for k, v in mlp.state_dict().items()})
    torch.save({"state_dict": sd}, tmp_path / "moco.pth.tar")
    teacher, report = load_teacher(tmp_path / "moco.pth.tar", arch="resnet18", features="auto")
    assert teacher.out_dim == 128 and "MoCo v2 MLP, 512-512-128" in str(report)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), mlp(src.forward_features(x).mean((2, 3))), rtol=1e-5, atol=1e-5)
    assert load_teacher(tmp_path / "moco.pth.tar", arch="resnet18")[0].out_dim == 512  # features: backbone
    bare = {k: v for k, v in sd.items() if ".fc." not in k}
    torch.save({"state_dict": bare}, tmp_path / "bare.pth.tar")
    assert load_teacher(tmp_path / "bare.pth.tar", arch="resnet18", features="auto")[0].out_dim == 512
    with pytest.raises(TeacherError, match="projection head"):
        load_teacher(tmp_path / "bare.pth.tar", arch="resnet18", features="head")
