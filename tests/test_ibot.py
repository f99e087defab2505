import json

import numpy as np
import pytest
import torch

from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.data.masking import MaskGenerator
from sslkd.losses import IBOTPatchLoss
from sslkd.methods import StepInfo
from sslkd.train import Trainer


@pytest.mark.parametrize("mode", ["block", "random"])
def test_mask_ratios_fall_in_range(mode):
    gen = MaskGenerator((0.1, 0.5), mask_prob=0.5, mode=mode)
    masks = gen(400, 8, 8, torch.Generator().manual_seed(0))
    ratios = masks.float().mean((1, 2))
    masked = ratios[ratios > 0]
    assert 0.35 < (ratios > 0).float().mean() < 0.65  # ~half the images are masked
    assert masked.min() >= 0.1 - 1 / 64 and masked.max() <= 0.5 + 1 / 64
    assert abs(masked.mean().item() - 0.3) < 0.03
    again = gen(400, 8, 8, torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)
    if mode == "block":  # blocks, not salt and pepper: most masked patches have a masked neighbour
        m = masks[ratios > 0].float()
        nb = torch.zeros_like(m)
        nb[:, 1:] += m[:, :-1]
        nb[:, :-1] += m[:, 1:]
        nb[:, :, 1:] += m[:, :, :-1]
        nb[:, :, :-1] += m[:, :, 1:]
        assert ((nb > 0) & (m > 0)).sum() / m.sum() > 0.9


def naive_patch_loss(s, t, masks, center, ts, tt):
    s, t, c = s.double().numpy(), t.double().numpy(), center.double().numpy()[0]

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    views = []
    for v in range(s.shape[0]):
        per_image = []
        for b in range(s.shape[1]):
            idx = np.flatnonzero(masks[v, b].numpy())
            if len(idx) == 0:
                continue
            ce = [-(softmax((t[v, b, n] - c) / tt) * np.log(softmax(s[v, b, n] / ts))).sum() for n in idx]
            per_image.append(np.mean(ce))
        views.append(np.mean(per_image))
    return np.mean(views)


def test_patch_loss_formula_only_masked_positions_and_no_dilution():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 6, 16, generator=g), torch.randn(2, 4, 6, 16, generator=g)
    masks = torch.rand(2, 4, 6, generator=g) < 0.4
    masks[0, 1] = False  # an image without any masked patch
    masks[1, 2, 0] = True
    loss = IBOTPatchLoss(16)
    loss.center.copy_(torch.randn(1, 16, generator=g) * 0.1)
    out = loss(s, t, masks, 0.07)
    np.testing.assert_allclose(out.item(), naive_patch_loss(s, t, masks, loss.center, 0.1, 0.07), rtol=1e-5)
    s2 = s.clone()
    s2[~masks] = torch.randn(int((~masks).sum()), 16, generator=g) * 10  # unmasked positions changed
    torch.testing.assert_close(loss(s2, t, masks, 0.07), out)


def test_ibot_student_sees_masks_teacher_does_not(tmp_path):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "method.name=ibot",
            "model.depth=1",
            "method.out_dim=32",
            "method.hidden_dim=32",
            "method.bottleneck_dim=16",
            "method.mask_prob=1.0",
            "train.batch_size=8",
            "device=cpu",
        ],
    )
    tr = Trainer(cfg, data, progress=False)
    method = tr.method
    calls = []
    for name, enc in (("student", method.student), ("teacher", method.teacher)):
        orig = enc.backbone.forward_features
        enc.backbone.forward_features = (lambda o, n: lambda x, mask=None: (calls.append((n, mask)), o(x, mask))[1])(
            orig, name
        )
    views = next(iter(tr.loader(0, 0)))[0]
    losses, metrics = method(views, StepInfo(0, 0.0, 8, 1))
    assert [n for n, _ in calls] == ["teacher", "student"]
    assert calls[0][1] is None and calls[1][1].any()
    assert set(losses) == {"loss", "cls", "patch"} and metrics["mask_ratio"] > 0


@pytest.mark.parametrize("mode", ["kd", "rkd-d", "rkd-a"])
def test_tiny_ibot_run_per_mode_loss_falls(tmp_path, mode):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=64)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "method.name=ibot",
            f"method.distill.mode={mode}",
            "model.depth=1",
            "model.drop_path_rate=0.0",
            "method.out_dim=64",
            "method.hidden_dim=64",
            "method.bottleneck_dim=32",
            "train.batch_size=16",
            "train.epochs=6",
            "train.warmup_epochs=1",
            "train.freeze_last_layer=0",
            "train.base_lr=2e-3",
            "aug.local_crops_number=0",
            "device=cpu",
            "train.log_every=4",
            # a mean over the masked images: iBOT's batch mean swings with how many of 16 are masked
            "method.patch_norm=masked",
        ],
    )
    Trainer(cfg, data, progress=False).fit()
    rec = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    first = np.mean([r["loss"] for r in rec[:3]])
    last = np.mean([r["loss"] for r in rec[-3:]])
    assert last < first, (mode, first, last)


def test_patch_loss_on_masked_rows_equals_dense_and_centres_alike():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 6, 16, generator=g), torch.randn(2, 4, 6, 16, generator=g)
    masks = torch.rand(2, 4, 6, generator=g) < 0.4
    masks[0, 1] = False
    dense, rows = IBOTPatchLoss(16), IBOTPatchLoss(16)
    sr = s.clone().requires_grad_()
    a = dense(sr, t, masks, 0.07)
    s_rows = s[masks].clone().requires_grad_()
    b = rows(s_rows, t[masks], masks, 0.07, teacher_mean=t.reshape(-1, 16).mean(0))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    a.backward()
    b.backward()
    torch.testing.assert_close(sr.grad[masks], s_rows.grad)
    dense.update_center(), rows.update_center()
    torch.testing.assert_close(dense.center, rows.center)
    with pytest.raises(ValueError, match="teacher_mean"):
        rows(s[masks], t[masks], masks, 0.07)


def test_ibot_masked_rows_path_equals_dense_path(tmp_path):
    """The heads project only the masked positions (no BatchNorm in the head): same losses, same
    gradients and centres as projecting every patch."""
    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "method.name=ibot",
            "model.depth=1",
            "method.out_dim=32",
            "method.hidden_dim=32",
            "method.bottleneck_dim=16",
            "method.mask_prob=1.0",
            "model.drop_path_rate=0.0",
            "train.batch_size=8",
            "device=cpu",
        ],
    )
    tr = Trainer(cfg, data, progress=False)
    method = tr.method
    views = next(iter(tr.loader(0, 0)))[0]
    results = []
    for dense in (False, True):
        method.ctx.method.use_bn_in_head = dense  # only steers the path here: the head was built without BN
        method.zero_grad()
        losses, _ = method(views, StepInfo(0, 0.0, 8, 1))
        losses["loss"].backward()
        grads = [p.grad.clone() for p in method.student.parameters() if p.grad is not None]
        method.patch_loss.update_center()
        results.append((losses, grads, method.patch_loss.center.clone()))
        method.patch_loss.center.zero_()
    (ls, gs, cs), (ld, gd, cd) = results
    for k in ld:
        torch.testing.assert_close(ls[k], ld[k], rtol=1e-5, atol=1e-6)
    assert len(gs) == len(gd)
    for a, b in zip(gs, gd):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cs, cd, rtol=1e-5, atol=1e-7)


def test_patch_center_masked_records_the_teachers_mean_over_masked_positions(tmp_path):
    """``patch_center: masked`` (lightly's statistic): the centre's record is the teacher's mean
    output over the masked positions, the same on the masked-rows and the dense path, and not the
    all-patch mean of iBOT's default; the loss itself is unchanged."""
    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "method.name=ibot",
            "model.depth=1",
            "method.out_dim=32",
            "method.hidden_dim=32",
            "method.bottleneck_dim=16",
            "method.mask_prob=1.0",
            "model.drop_path_rate=0.0",
            "train.batch_size=8",
            "device=cpu",
        ],
    )
    method = Trainer(cfg, data, progress=False).method
    views = next(iter(Trainer(cfg, data, progress=False).loader(0, 0)))[0]
    info = StepInfo(0, 0.0, 8, 1)
    with torch.no_grad():
        masks = method.masks(2, 4, 4, info, 8)[0].flatten(0, 1)
        out = method.teacher(torch.cat(views[:2]))["patch_out"]  # dense [2B, N, K]
    expected = out[masks.flatten(1)].mean(0)
    records, losses = {}, {}
    for center, dense in (("all", False), ("masked", False), ("masked", True)):
        method.ctx.method.patch_center, method.ctx.method.use_bn_in_head = center, dense  # steer only
        method.patch_loss.pending.clear()
        with torch.no_grad():
            losses[center, dense] = method(views, info)[0]["patch"]
        records[center, dense] = method.patch_loss.pending[0]
    torch.testing.assert_close(records["masked", False], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(records["masked", True], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(records["all", False], out.reshape(-1, out.shape[-1]).mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(records["all", False], expected, atol=1e-4)
    torch.testing.assert_close(losses["masked", False], losses["all", False])


def test_unshared_head_teacher_projects_patches_with_its_cls_layer_as_ibot():
    """iBOT's shared_head_teacher: a student with its own patch last layer, a teacher whose patch
    outputs come from its CLS last layer (the EMA of the student's); or its own when switched off."""
    from sslkd.config import ConfigError, load_config
    from sslkd.methods import build_method

    base = {
        "device": "cpu",
        "model": {"backbone": "vit_tiny", "patch_size": 4, "depth": 1},
        "method": {"name": "ibot", "out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16, "shared_head": False},
    }
    z = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    for shared_teacher in (True, False):
        cfg = load_config(None, [f"method.shared_head_teacher={str(shared_teacher).lower()}"], base=base)
        method = build_method(cfg, 3, 16)
        t, s = method.teacher.head, method.student.head
        with torch.no_grad():
            t.patch_last_layer.weight_v.add_(1.0)  # make the two teacher layers tell apart
        expect = t.last_layer(z) if shared_teacher else t.patch_last_layer(z)
        torch.testing.assert_close(t.project_patches(z), expect)
        torch.testing.assert_close(s.project_patches(z), s.patch_last_layer(z))
    with pytest.raises(ConfigError, match="shared_head_teacher"):
        load_config(None, ["method.patch_out_dim=64"], base=base)


def test_patch_rkd_relates_only_the_views_the_student_saw_masked(tmp_path):
    """Patch-level RKD is masked image modelling on structures: the groups are the (view, image)
    pairs with a masked patch, unless ``distill.patch_images: all``; the sum is divided by the
    step's masked views per shard, so a batch split into micro-batches gives the same loss."""
    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    base = [
        f"output_dir={tmp_path}",
        "method.name=ibot",
        "model.depth=1",
        "method.out_dim=32",
        "method.hidden_dim=32",
        "method.bottleneck_dim=16",
        "method.mask_prob=0.5",
        "model.drop_path_rate=0.0",
        "train.batch_size=8",
        "device=cpu",
        "method.distill.mode=rkd-d",
        "method.distill.levels=patch",
    ]
    info = StepInfo(0, 0.0, 8, 1)
    groups = {}
    for which in ("masked", "all"):
        cfg = load_config(None, base + [f"method.distill.patch_images={which}"])
        tr = Trainer(cfg, data, progress=False)
        method = tr.method
        views = next(iter(tr.loader(0, 0)))[0]
        seen = []
        real = method.relational
        method.relational = lambda s, t, *a, seen=seen, real=real: seen.append(s.shape[0]) or real(s, t, *a)
        with torch.no_grad():
            losses, _ = method(views, info)
        vmasks, has = method.masks(2, 4, 4, info, 8)
        groups[which] = seen[-1]
        if which == "masked":
            assert 0 < seen[-1] == int(vmasks.flatten(2).any(-1).sum()) < 16  # some views unmasked
            # halves of the batch as two micro-batches: the mean of their losses is the whole's
            halves = []
            for micro in range(2):
                part = [v[micro * 4 : (micro + 1) * 4] for v in views]
                with torch.no_grad():
                    halves.append(method(part, StepInfo(0, 0.0, 8, 1, accum_steps=2, micro=micro))[0]["rkd_patch"])
            torch.testing.assert_close(sum(halves) / 2, losses["rkd_patch"], rtol=1e-5, atol=1e-7)
    assert groups["all"] == 16


def _fidelity_method(tmp_path, *extra):
    base = [
        f"output_dir={tmp_path}",
        "method.name=ibot",
        "model.depth=1",
        "method.out_dim=32",
        "method.hidden_dim=32",
        "method.bottleneck_dim=16",
        "method.mask_prob=0.5",
        "model.drop_path_rate=0.0",
        "train.batch_size=8",
        "aug.local_crops_number=1",
        "aug.local_crops_size=8",
        "device=cpu",
        "method.teacher_temp=0.08",
        "method.warmup_teacher_temp=0.02",
        "method.warmup_teacher_temp_epochs=3",
        "method.teacher_patch_temp=0.09",
        "method.warmup_teacher_patch_temp=0.03",
        *extra,
    ]
    tr = Trainer(
        load_config(None, base), get_dataset("synthetic", "train", img_size=16, num_samples=32), progress=False
    )
    return tr.method, next(iter(tr.loader(0, 0)))[0]


@pytest.mark.parametrize("pairs", ["cross", "all"])
def test_rkd_relations_follow_ibots_temperatures_views_and_masked_tokens(tmp_path, pairs):
    """Issue 28, items 2-4: the teacher side of a relation takes iBOT's teacher temperature of
    that step and level (CLS: teacher_temp's warm-up, patch: teacher_patch_temp's) unless fixed;
    CLS relations pair each teacher view with the student's other views (``all``: every view);
    patch relations have the masked tokens as rows."""
    extra = ("method.distill.mode=rkd-d", f"method.distill.cls_pairs={pairs}", "method.distill.patch_tokens=masked")
    method, views = _fidelity_method(tmp_path, *extra)
    calls = []
    real = method.rkd[0].forward
    method.rkd[0].forward = lambda s, t, temp=None, rows=None: (
        calls.append((s.shape, temp, rows)) or real(s, t, temp, rows)
    )
    info = StepInfo(0, 1.0, 8, 1)  # epoch 1 of a 3-epoch warm-up (0, 1, 2): half way
    with torch.no_grad():
        method(views, info)
    cls_calls = [c for c in calls if c[2] is None]
    patch_calls = [c for c in calls if c[2] is not None]
    n_views = len(views)  # 2 global + 1 local
    assert len(cls_calls) == (2 * n_views if pairs == "all" else 2 * (n_views - 1))
    assert all(c[1] == pytest.approx(0.05) for c in cls_calls)  # 0.02 -> 0.08, half way
    assert len(patch_calls) == 1 and patch_calls[0][1] == pytest.approx(0.06)  # 0.03 -> 0.09, half way
    masks, _ = method.masks(2, 4, 4, info, 8)
    masked_views = masks.flatten(2).any(-1).flatten()
    torch.testing.assert_close(patch_calls[0][2], masks.flatten(2).flatten(0, 1)[masked_views])
    # fixed temperatures and every token, when asked
    method, views = _fidelity_method(
        tmp_path / "fixed",
        "method.distill.mode=rkd-d",
        "method.distill.teacher_temp=0.05",
        "method.distill.patch_tokens=all",
    )
    calls.clear()
    real = method.rkd[0].forward
    method.rkd[0].forward = lambda s, t, temp=None, rows=None: (
        calls.append((s.shape, temp, rows)) or real(s, t, temp, rows)
    )
    with torch.no_grad():
        method(views, info)
    assert all(c[1] == 0.05 and c[2] is None for c in calls)


def test_patch_loss_averages_over_the_whole_batch_as_ibots_code(tmp_path):
    """Issue 28, item 5: iBOT's code averages each view's per-image masked-patch loss over every
    image of the batch (unmasked images add 0); ``patch_norm: masked`` over the masked images."""
    losses = {}
    for norm in ("batch", "masked"):
        method, views = _fidelity_method(tmp_path / norm, f"method.patch_norm={norm}")
        with torch.no_grad():
            losses[norm] = method(views, StepInfo(0, 0.0, 8, 1))[0]["patch"]
    masks, has = method.masks(2, 4, 4, StepInfo(0, 0.0, 8, 1), 8)
    assert 0 < has.sum() < 16  # some images of each view unmasked
    # the same per-image sums, divided by 8 images or by the masked ones, view by view
    ratio = float(losses["batch"] / losses["masked"])
    per_view = has / 8
    assert min(per_view) - 1e-6 <= ratio <= max(per_view) + 1e-6
