"""Any timm model as the backbone, and a student that starts from pretrained weights."""

import pytest
import timm
import torch

import sslkd
from sslkd.checkpoint import save_atomic
from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.errors import ConfigError, TeacherError
from sslkd.export import export
from sslkd.methods import build_method
from sslkd.models import CNNBackbone, ViTBackbone, build_backbone, is_vit
from sslkd.pretrained import load_pretrained
from sslkd.teachers import load_teacher
from sslkd.train import Trainer
from sslkd.weights import resolve

TINY = {
    "device": "cpu",
    "data": {"name": "synthetic", "img_size": 16},
    "model": {"backbone": "vit_tiny", "patch_size": 4, "depth": 1},
    "method": {"name": "dino", "out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16},
    "train": {"epochs": 1, "batch_size": 8, "max_steps": 2, "warmup_epochs": 0, "precision": "fp32"},
}


@pytest.mark.parametrize(
    "name, kind, dim",
    [
        ("deit_tiny_distilled_patch16_224", ViTBackbone, 192),  # two prefix tokens: CLS + distillation
        ("convnext_atto", CNNBackbone, 320),
        ("regnetx_002", CNNBackbone, 368),
        ("mobilenetv3_small_050", CNNBackbone, None),
    ],
)
def test_timm_models_build_behind_one_interface(name, kind, dim):
    bb = build_backbone(name, 32, 8, 3)
    assert isinstance(bb, kind) and is_vit(name) == (kind is ViTBackbone) and (dim is None or bb.embed_dim == dim)
    cls, tokens = bb.forward_features(torch.randn(2, 3, 32, 32))
    assert cls.shape == (2, bb.embed_dim) and tokens.shape[0] == 2 and tokens.shape[-1] == bb.embed_dim
    if kind is ViTBackbone:
        assert tokens.shape[1] == (32 // 8) ** 2  # the patch size is sslkd's, not the name's
        masked, _ = bb.forward_features(torch.randn(2, 3, 32, 32), torch.ones(2, 16, dtype=torch.bool))
        assert masked.shape == (2, 192)


def test_a_timm_model_trains_and_masked_methods_need_a_vit_family_model(tmp_path):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    cfg = load_config(None, [f"output_dir={tmp_path}", "model.backbone=convnext_atto"], base=TINY)
    assert Trainer(cfg, data, progress=False).fit()["step"] == 2
    cfg = load_config(
        None,
        [f"output_dir={tmp_path / 'i'}", "model.backbone=deit_tiny_patch16_224"],
        base={**TINY, "method": {"name": "ibot", "out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16}},
    )
    assert Trainer(cfg, data, progress=False).fit()["step"] == 2
    with pytest.raises(ConfigError, match="nor a timm model name"):
        load_config(None, ["model.backbone=convnext_attoo"], base=TINY)
    mae = {**TINY, "model": {"backbone": "convnext_atto"}, "method": {"name": "mae"}}
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        build_method(load_config(None, [], base=mae), 3, 16)


def test_info_lists_models_by_family(capsys):
    assert main(["info", "--models", "deit_tiny"]) == 0
    out = capsys.readouterr().out
    assert "deit_tiny_patch16_224" in out.split("\n")[0] and "(0)" in out.split("\n")[1]


def test_a_student_starts_from_a_run_a_file_or_says_why_not(tmp_path, capsys):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    Trainer(load_config(None, [f"output_dir={tmp_path / 'a'}"], base=TINY), data, progress=False).fit()
    source = load_pretrained(tmp_path / "a").backbone.vit.state_dict()
    cfg = load_config(None, [f"output_dir={tmp_path / 'b'}", f"model.pretrained={tmp_path / 'a'}"], base=TINY)
    tr = Trainer(cfg, data, progress=False)
    for net in (tr.method.student, tr.method.teacher):  # the EMA teacher starts from the same weights
        got = net.backbone.vit.state_dict()
        assert all(torch.equal(got[k], v) for k, v in source.items())
    assert "model.pretrained:" in capsys.readouterr().out
    # another project's file (DINO's layout), at another grid: the position embedding is resampled
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1, num_classes=0)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in vit.state_dict().items()}}, tmp_path / "dino.pth")
    cfg = load_config(None, [f"output_dir={tmp_path / 'c'}", f"model.pretrained={tmp_path / 'dino.pth'}"], base=TINY)
    got = Trainer(cfg, data, progress=False).method.student.backbone.vit.state_dict()
    assert torch.equal(got["blocks.0.attn.qkv.weight"], vit.state_dict()["blocks.0.attn.qkv.weight"])
    assert got["pos_embed"].shape[1] == 1 + 16
    # an sslkd export folder: the same weights as its run's, for a student, a teacher and load_backbone
    export(tmp_path / "a", tmp_path / "exp")
    cfg = load_config(None, [f"output_dir={tmp_path / 'e'}", f"model.pretrained={tmp_path / 'exp'}"], base=TINY)
    got = Trainer(cfg, data, progress=False).method.student.backbone.vit.state_dict()
    assert all(torch.equal(got[k], v) for k, v in source.items())
    teacher, report = load_teacher(tmp_path / "exp", arch="vit_tiny", patch_size=4, img_size=16, depth=1)
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(teacher(x), sslkd.load_backbone(tmp_path / "exp")(x), atol=1e-5)
    with pytest.raises(TeacherError, match="writes the backbone of an sslkd run"):
        export(tmp_path / "exp", tmp_path / "again")
    with pytest.raises(TeacherError, match="not found"):
        Trainer(load_config(None, [f"model.pretrained={tmp_path / 'nope'}"], base=TINY), data, progress=False)
    wrong = load_config(
        None,
        [f"output_dir={tmp_path / 'd'}", "model.backbone=resnet18", f"model.pretrained={tmp_path / 'a'}"],
        base=TINY,
    )
    with pytest.raises(TeacherError, match="does not match the architecture"):
        Trainer(wrong, data, progress=False)


def test_weights_of_another_architecture_are_refused_and_a_resume_needs_no_source(tmp_path):
    dinov2 = timm.create_model("vit_small_patch14_dinov2", img_size=28, depth=1, num_classes=0)
    torch.save(dinov2.state_dict(), tmp_path / "d.pth")  # LayerScale: not vit_small's blocks
    base = {
        **TINY,
        "model": {"backbone": "vit_small", "patch_size": 14, "depth": 1},
        "data": {"name": "synthetic", "img_size": 28},
    }
    data = get_dataset("synthetic", "train", img_size=28, num_samples=32)
    with pytest.raises(TeacherError, match="another architecture"):
        Trainer(
            load_config(None, [f"output_dir={tmp_path / 'x'}", f"model.pretrained={tmp_path / 'd.pth'}"], base=base),
            data,
            progress=False,
        )
    good = {**base, "model": {**base["model"], "backbone": "vit_small_patch14_dinov2"}}
    cfg = load_config(None, [f"output_dir={tmp_path / 'r'}", f"model.pretrained={tmp_path / 'd.pth'}"], base=good)
    Trainer(cfg, data, progress=False).fit()
    (tmp_path / "d.pth").unlink()  # the source is gone: resuming takes the weights from the checkpoint
    cfg = load_config(
        None, [f"output_dir={tmp_path / 'r'}", f"model.pretrained={tmp_path / 'd.pth'}", "train.max_steps=3"], base=good
    )
    assert Trainer(cfg, data, progress=False).fit(resume="auto")["step"] == 3


def test_one_reading_of_a_weight_source(tmp_path):
    run, ckpt_file, other, exported = tmp_path / "run", tmp_path / "c.pt", tmp_path / "o.pth", tmp_path / "exp"
    run.mkdir()
    save_atomic({"format": 1, "step": 0}, ckpt_file)
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    exported.mkdir()
    (exported / "config.json").write_text("{}")
    (exported / "model.safetensors").write_bytes(b"")
    kinds = {s: resolve(s).kind for s in ("timm:vit_tiny_patch16_224", run, ckpt_file, other, exported)}
    assert list(kinds.values()) == ["timm", "sslkd", "sslkd", "file", "export"]
    assert resolve("timm:resnet18.a1_in1k").timm_name == "resnet18.a1_in1k"
    with pytest.raises(TeacherError, match=r"model.pretrained not found: .*nope \(expected an sslkd run folder"):
        resolve(tmp_path / "nope", "model.pretrained")
