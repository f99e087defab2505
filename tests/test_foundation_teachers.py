"""Today's foundation models as teachers: DINOv2 (with and without registers) and CLIP image towers
in their own checkpoint layouts, generated here from timm models and read back onto timm models
with the same features."""

import pytest
import timm
import torch

from sslkd.teachers import load_teacher


def _features(model, x):
    return model.forward_features(x)[:, 0]  # the CLS token after the final norm


def _dinov2_file(path, registers: bool):
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    model = timm.create_model(name, img_size=28, depth=2, num_classes=0).eval()
    with torch.no_grad():  # LayerScale starts at 1e-5: make the blocks count
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = dict(model.state_dict())
    if registers:  # DINOv2's layout: registers apart, the position embedding has the CLS slot
        state["register_tokens"] = state.pop("reg_token")
        state["pos_embed"] = torch.cat([torch.zeros(1, 1, 384), state["pos_embed"]], 1)
    state["mask_token"] = torch.zeros(1, 384)
    torch.save(state, path)
    return model


def _openai_clip_file(path):
    model = timm.create_model("vit_base_patch16_clip_224", img_size=32, depth=1, num_classes=0).eval()
    swaps = [
        ("patch_embed.proj", "conv1"),
        ("blocks.", "transformer.resblocks."),
        ("norm_pre", "ln_pre"),
        ("norm1", "ln_1"),
        ("norm2", "ln_2"),
        ("attn.qkv.", "attn.in_proj_"),
        ("attn.proj", "attn.out_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    ]
    state = {"transformer.text_projection": torch.zeros(4, 4)}  # a text tower key, to be dropped
    for k, v in model.state_dict().items():
        if k == "cls_token":
            k, v = "class_embedding", v[0, 0]
        elif k == "pos_embed":
            k, v = "positional_embedding", v[0]
        elif k.startswith("norm."):
            k = k.replace("norm.", "ln_post.")
        for a, b in swaps:
            k = k.replace(a, b)
        state[f"visual.{k}"] = v
    state["visual.proj"] = torch.randn(768, 512)
    torch.save(state, path)
    return model


@pytest.mark.parametrize("registers", [False, True])
def test_dinov2_checkpoints_load_with_their_features(tmp_path, registers):
    model = _dinov2_file(tmp_path / "dinov2.pth", registers)
    teacher, report = load_teacher(tmp_path / "dinov2.pth", arch="vit_small")  # patch 14 and grid from the file
    assert report.layout == ("dinov2+registers" if registers else "dinov2") and not report.missing
    assert teacher.backbone.patch_size == 14 and teacher.backbone.num_prefix_tokens == (5 if registers else 1)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), _features(model, x), rtol=1e-4, atol=1e-5)
    tokens = teacher.tokens(x)  # DMT's token sequence: CLS + patches, registers left out
    assert tokens.shape == (2, 1 + 4, 384)


def test_openai_clip_image_tower_loads_with_its_features(tmp_path):
    model = _openai_clip_file(tmp_path / "clip.pt")
    teacher, report = load_teacher(tmp_path / "clip.pt", arch="vit_base")
    assert report.layout == "clip" and not report.missing and teacher.backbone.patch_size == 16
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), _features(model, x), rtol=1e-4, atol=1e-5)


def _dinov3_file(path):
    """DINOv3's layout from timm's EVA model: storage tokens, ls1/ls2 gammas, one qkv bias (k part 0)."""
    model = timm.create_model("vit_small_patch16_dinov3", img_size=32, depth=1, num_classes=0).eval()
    state = {}
    for k, v in model.state_dict().items():
        if "rope" in k:
            continue
        if k.endswith("q_bias"):
            v_bias = model.state_dict()[k.replace("q_bias", "v_bias")]
            state[k.replace("q_bias", "qkv.bias")] = torch.cat([v, torch.zeros_like(v), v_bias])
            continue
        if k.endswith("v_bias"):
            continue
        k = k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma").replace("reg_token", "storage_tokens")
        state[k] = v
    state["mask_token"] = torch.zeros(1, 384)
    torch.save(state, path)
    return model


def test_dinov3_checkpoint_loads_with_its_features(tmp_path):
    model = _dinov3_file(tmp_path / "dinov3.pth")
    teacher, report = load_teacher(tmp_path / "dinov3.pth", arch="vit_small", img_size=32)
    assert report.layout == "dinov3" and not report.missing
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), _features(model, x), rtol=1e-4, atol=1e-5)
