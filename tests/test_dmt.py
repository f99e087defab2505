import math

import numpy as np
import pytest
import torch

from sslkd.losses import SpatialFusionLoss, TokenFusionLoss


def softmax(v):
    e = [math.exp(x - max(v)) for x in v]
    return [x / sum(e) for x in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def naive(student, teachers):
    """TFD and SFD exactly as written in the DMT paper, loops in float64."""
    s = student.double().tolist()
    fused = sum(t.double() for t in teachers).tolist()
    B, N1, D = len(s), len(s[0]), len(s[0][0])
    tfd = sfd = 0.0
    for b in range(B):
        tfd += sum(kl(softmax(s[b][n]), softmax(fused[b][n])) for n in range(N1)) / N1
        chans = 0.0
        for c in range(D):
            fs = [s[b][n][c] for n in range(1, N1)]
            ft = [fused[b][n][c] for n in range(1, N1)]
            chans += kl(softmax(fs), softmax(ft))
        sfd += chans / D
    return tfd / B, sfd / B


@pytest.mark.parametrize("m", [1, 3])
def test_tfd_sfd_match_the_formulas(m):
    g = torch.Generator().manual_seed(m)
    student = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    teachers = [torch.randn(2, 5, 6, generator=g, dtype=torch.float64) for _ in range(m)]
    tfd, sfd = naive(student, teachers)
    np.testing.assert_allclose(TokenFusionLoss()(student, teachers).item(), tfd, rtol=1e-6)
    np.testing.assert_allclose(SpatialFusionLoss()(student, teachers).item(), sfd, rtol=1e-6)


def test_zero_at_the_fused_teacher_positive_elsewhere_and_no_teacher_gradient():
    g = torch.Generator().manual_seed(0)
    teachers = [torch.randn(2, 5, 6, generator=g, requires_grad=True) for _ in range(2)]
    fused = (teachers[0] + teachers[1]).detach()
    for loss in (TokenFusionLoss(), SpatialFusionLoss()):
        assert loss(fused, teachers).item() == pytest.approx(0.0, abs=1e-6)
        s = torch.randn(2, 5, 6, generator=g, requires_grad=True)
        value = loss(s, teachers)
        assert value.item() > 1e-4
        value.backward()
        assert s.grad is not None and all(t.grad is None for t in teachers)


def test_mse_variant_and_grid_mismatch():
    s, t = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    torch.testing.assert_close(TokenFusionLoss("mse")(s, [t]), ((s - t) ** 2).mean())
    torch.testing.assert_close(SpatialFusionLoss("mse")(s, [t]), ((s[:, 1:] - t[:, 1:]) ** 2).mean())
    big = torch.randn(2, 17, 4)  # a 4x4 grid against the student's 2x2
    with pytest.raises(ValueError, match="16 patch tokens, the student 4"):
        TokenFusionLoss()(s, [big])
    assert torch.isfinite(TokenFusionLoss(resample=True)(s, [big]))
    with pytest.raises(ValueError, match="width"):
        SpatialFusionLoss()(s, [torch.randn(2, 5, 8)])


def test_dmt_trains_a_student_from_two_frozen_teachers(tmp_path):
    import json

    import timm

    from sslkd import checkpoint as ckpt
    from sslkd.cli import main
    from sslkd.teachers import load_teacher

    paths = []
    for seed in (0, 1):  # two different "self-supervised" ViT-Tiny teachers (MAE / iBOT layouts)
        torch.manual_seed(seed)
        vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, num_classes=0, depth=1)
        path = tmp_path / f"t{seed}.pth"
        torch.save({"model": vit.state_dict()} if seed == 0 else {"teacher": vit.state_dict()}, path)
        paths.append(str(path))
    cfg = tmp_path / "dmt.yaml"
    cfg.write_text(
        "device: cpu\ndata: {name: synthetic, img_size: 16}\n"
        "model: {backbone: vit_tiny, patch_size: 4, depth: 1, drop_path_rate: 0.0}\n"
        f"method: {{name: dmt, teachers: [{paths[0]}, {paths[1]}], teacher_arch: vit_tiny, teacher_patch_size: 4}}\n"
        "train: {epochs: 3, batch_size: 32, base_lr: 2.0e-3, warmup_epochs: 0, log_every: 1}\n"
        f"output_dir: {tmp_path / 'run'}\n"
    )
    before = [load_teacher(p, arch="vit_tiny", patch_size=4, strict=False)[0].state_dict() for p in paths]
    assert main(["pretrain", "--config", str(cfg), "--no-progress"]) == 0
    recs = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"tfd"' in line
    ]
    assert recs[-1]["tfd"] < recs[0]["tfd"] and recs[-1]["sfd"] < recs[0]["sfd"]
    state = ckpt.load(ckpt.list_checkpoints(tmp_path / "run")[0])["method"]
    for i, sd in enumerate(before):
        for k, v in sd.items():
            assert torch.equal(state[f"teachers.{i}.{k}"], v), k
    assert main(["eval", "knn", "--checkpoint", str(tmp_path / "run"), "--dataset", "synthetic", "--json"]) == 0


def test_dmt_takes_teachers_made_by_sslkd_mocov3_and_mae(tmp_path):
    from sslkd.config import load_config
    from sslkd.data import get_dataset
    from sslkd.train import Trainer

    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    runs = []
    for method, extra in (
        ("mocov3", ["method.hidden_dim=32", "method.out_dim=16"]),
        ("mae", ["method.decoder_dim=32", "method.decoder_heads=2", "method.decoder_depth=1"]),
    ):
        out = tmp_path / method
        cfg = load_config(
            None,
            [
                f"output_dir={out}",
                f"method.name={method}",
                "model.depth=1",
                "model.patch_size=4",
                "train.batch_size=16",
                "train.max_steps=1",
                "device=cpu",
            ]
            + extra,
        )
        Trainer(cfg, data, progress=False).fit()
        runs.append(str(out))
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'dmt'}",
            "method.name=dmt",
            f"method.teachers={runs}",
            "model.depth=1",
            "model.patch_size=4",
            "train.batch_size=16",
            "train.max_steps=2",
            "device=cpu",
        ],
    )
    summary = Trainer(cfg, data, progress=False).fit()
    assert summary["step"] == 2 and np.isfinite(summary["loss"])


def test_student_view_is_colour_jittered_only_never_gray():
    """DMT: "color jitter is only applied to the students": with jitter off and grayscale certain,
    the student's view equals the teachers' (per image and batched)."""
    from sslkd.config import AugConfig
    from sslkd.data.augment import MultiCropTransform
    from sslkd.data.batch_augment import BatchMultiCrop

    aug = AugConfig(paired=True, color_jitter_p=0.0, grayscale_p=1.0, blur_p=(1.0, 1.0, 1.0), solarize_p=1.0)
    t = MultiCropTransform.from_config(aug, 16, 3, (0.5,) * 3, (0.25,) * 3)
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    plain, student = t(img)
    assert torch.equal(plain, student)
    plain, student = BatchMultiCrop.from_transform(t)(img[None], 0)
    assert torch.equal(plain, student)
