"""MoCo v3 and MAE: losses against their formulas written naively in float64, and tiny runs that learn."""

import json

import numpy as np
import pytest
import torch

from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.losses import MAELoss, MoCoV3Loss, patchify
from sslkd.pretrained import load_pretrained
from sslkd.train import Trainer


def naive_ctr(q, k, tau):
    q = q.double().numpy()
    k = k.double().numpy()
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(q)):
        logits = [q[i] @ k[j] / tau for j in range(len(k))]
        total += -(logits[i] - np.log(np.sum(np.exp(logits))))
    return 2 * tau * total / len(q)


def test_mocov3_loss_matches_formula_and_keys_get_no_gradient():
    g = torch.Generator().manual_seed(0)
    q1, q2, k1, k2 = (torch.randn(6, 8, generator=g) for _ in range(4))
    q1.requires_grad_(), k2.requires_grad_()
    loss = MoCoV3Loss(0.2)(q1, q2, k1, k2)
    expected = naive_ctr(q1.detach(), k2.detach(), 0.2) + naive_ctr(q2, k1, 0.2)
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-5)
    loss.backward()
    assert q1.grad is not None and q1.grad.abs().sum() > 0 and k2.grad is None
    with pytest.raises(ValueError, match="temperature"):
        MoCoV3Loss(0.0)


def test_patchify_and_mae_loss_only_on_masked_patches():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)
    t = patchify(x, 2)
    assert t.shape == (2, 4, 12)
    torch.testing.assert_close(t[1, 3].reshape(2, 2, 3).permute(2, 0, 1), x[1, :, 2:, 2:])  # bottom-right patch
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 12, generator=g), torch.randn(2, 4, 12, generator=g)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.float32)
    tn = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    naive = np.mean([((pred[b, n] - tn[b, n]) ** 2).mean().item() for b in range(2) for n in range(4) if mask[b, n]])
    np.testing.assert_allclose(MAELoss()(pred, target, mask).item(), naive, rtol=1e-6)
    pred2 = pred.clone()
    pred2[mask == 0] += 100.0  # visible patches do not count
    torch.testing.assert_close(MAELoss()(pred2, target, mask), MAELoss()(pred, target, mask))


def test_mae_encoder_sees_only_visible_patches(tmp_path):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=16)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "method.name=mae",
            "model.depth=1",
            "model.patch_size=4",
            "train.batch_size=8",
            "device=cpu",
        ],
    )
    method = Trainer(cfg, data, progress=False).method
    ids, mask = method.random_mask(8, 16, "cpu")
    assert ids.shape == (8, 4) and mask.sum(1).eq(12).all()  # 75% of 16 masked
    out = method.student.backbone.forward_visible(torch.randn(8, 3, 16, 16), ids)
    assert out.shape == (8, 5, 192)


@pytest.mark.parametrize(
    "method,extra",
    [
        ("mocov3", ["method.hidden_dim=64", "method.out_dim=32", "method.temperature=0.5"]),
        ("mae", ["method.decoder_dim=32", "method.decoder_heads=2", "method.decoder_depth=1"]),
    ],
)
def test_tiny_run_learns_checkpoints_and_evaluates(tmp_path, method, extra):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=64)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            f"method.name={method}",
            "model.depth=1",
            "model.patch_size=4",
            "model.drop_path_rate=0.0",
            "train.batch_size=16",
            "train.epochs=8",
            "train.warmup_epochs=1",
            "train.base_lr=2e-3",
            "train.log_every=4",
            "device=cpu",
            "train.momentum_teacher=0.99",
        ]
        + extra,
    )
    Trainer(cfg, data, progress=False).fit()
    rec = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert np.mean([r["loss"] for r in rec[-3:]]) < np.mean([r["loss"] for r in rec[:3]]), method
    pre = load_pretrained(tmp_path)
    assert pre.backbone(torch.randn(2, 3, 16, 16)).shape == (2, 192)


def test_mocov3_predictor_is_trained_and_teacher_is_ema(tmp_path):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=16)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "method.name=mocov3",
            "model.depth=1",
            "method.hidden_dim=32",
            "method.out_dim=16",
            "train.batch_size=8",
            "device=cpu",
        ],
    )
    tr = Trainer(cfg, data, progress=False)
    names = {n for n, _ in tr.method.trainable_parameters()}
    assert any(n.startswith("predictor.") for n in names) and not any(n.startswith("teacher.") for n in names)
    before = [p.clone() for p in tr.method.teacher.parameters()]
    views = next(iter(tr.loader(0, 0)))[0]
    tr.train_step([views])
    m = float(tr.schedules.momentum[0])
    for b, t, s in zip(before, tr.method.teacher.parameters(), tr.method.student.parameters()):
        torch.testing.assert_close(t, m * b + (1 - m) * s, rtol=1e-5, atol=1e-6)


def test_mocov3_accumulation_contrasts_against_the_whole_batch(tmp_path):
    """accum_steps=2: the loss and every gradient are those of InfoNCE over the concatenated
    micro-batch outputs (16 keys as negatives), built here in one autograd graph, not the mean of
    two 8-image InfoNCEs; BatchNorm statistics stay per micro-batch in both."""
    import copy

    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "method.name=mocov3",
            "model.depth=1",
            "method.hidden_dim=32",
            "method.out_dim=16",
            "train.batch_size=16",
            "train.accum_steps=2",
            "device=cpu",
            "model.drop_path_rate=0.0",
            "train.clip_grad=0",  # raw gradients
            "train.precision=fp32",
        ],
    )  # `auto` is bf16 on a CPU with AVX512-BF16; `ref` runs fp32
    tr = Trainer(cfg, data, progress=False)
    loader = iter(tr.loader(0, 0))
    micro = [next(loader)[0], next(loader)[0]]
    ref = copy.deepcopy(tr.method)
    outs = [ref.encode(views) for views in micro]
    whole = {k: torch.cat([o[k] for o in outs]) for k in ("q1", "q2", "k1", "k2")}
    expected = ref.loss_fn(whole["q1"], whole["q2"], whole["k1"], whole["k2"])
    expected.backward()
    per_micro = sum(ref.loss_fn(o["q1"], o["q2"], o["k1"], o["k2"]).item() for o in outs) / 2
    grads = {}
    opt = tr.optimizers[0]
    orig = opt.step

    def record(*a, **k):
        grads.update({id(p): p.grad.clone() for g in opt.param_groups for p in g["params"] if p.grad is not None})
        return orig(*a, **k)

    opt.step = record
    losses, _ = tr.train_step(micro)
    assert float(losses["mocov3"]) == pytest.approx(expected.item(), rel=1e-5)
    assert abs(expected.item() - per_micro) > 0.05  # 16 negatives, not 8: the test can tell them apart
    ref_params = dict(ref.trainable_parameters())
    for name, p in tr.method.trainable_parameters():
        if ref_params[name].grad is not None:
            torch.testing.assert_close(grads[id(p)], ref_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    assert len(grads) == sum(p.grad is not None for p in ref_params.values()) > 0
