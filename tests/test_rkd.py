import itertools

import numpy as np
import pytest
import torch

from sslkd.losses.rkd import RKDAngleLoss, RKDDistanceLoss


def huber(a, b, delta):
    d = abs(a - b)
    return 0.5 * d * d / delta if d < delta else d - 0.5 * delta


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def naive_dist(x):
    b = len(x)
    d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(b)] for i in range(b)])
    mu = sum(d[i, j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
    return d / mu


def naive_angle(x):
    b = len(x)
    psi = np.zeros((b, b, b))  # [j, i, k]
    for i, j, k in itertools.product(range(b), repeat=3):
        if i == j or k == j:
            continue
        eij = (x[i] - x[j]) / np.linalg.norm(x[i] - x[j])
        ekj = (x[k] - x[j]) / np.linalg.norm(x[k] - x[j])
        psi[j, i, k] = eij @ ekj
    return psi


def naive_rkd_d(s, t, kind, delta=1.0, ts=0.1, tt=0.04, sign=-1.0, rows=None):
    """The paper's Eq. 1-2 (Huber) or the row cross-entropy of ``softmax(sign * psi_D / tau)``,
    over the relations of the samples in ``rows`` (default: all)."""
    ps, pt = naive_dist(s), naive_dist(t)
    b = len(s)
    rows = range(b) if rows is None else rows
    if kind == "huber":
        return np.mean([huber(ps[i, j], pt[i, j], delta) for i in rows for j in range(b) if i != j])
    total = 0.0
    for i in rows:
        cols = [j for j in range(b) if j != i]
        q = softmax(sign * pt[i, cols] / tt)
        total += -(q * np.log(softmax(sign * ps[i, cols] / ts))).sum()
    return total / len(rows)


def naive_rkd_a(s, t, kind, delta=1.0, ts=0.1, tt=0.04, rows=None):
    ps, pt = naive_angle(s), naive_angle(t)
    b = len(s)
    rows = range(b) if rows is None else rows
    if kind == "huber":
        return np.mean(
            [
                huber(ps[j, i, k], pt[j, i, k], delta)
                for i, j, k in itertools.product(range(b), repeat=3)
                if i != j and k != j and i in rows
            ]
        )
    total = 0.0
    for j in range(b):
        for i in rows:
            if i == j:
                continue
            cols = [k for k in range(b) if k not in (i, j)]
            q = softmax(pt[j, i, cols] / tt)
            total += -(q * np.log(softmax(ps[j, i, cols] / ts))).sum()
    return total / (len(rows) * (b - 1))


@pytest.mark.parametrize("kind", ["huber", "ce"])
@pytest.mark.parametrize("cls, naive", [(RKDDistanceLoss, naive_rkd_d), (RKDAngleLoss, naive_rkd_a)])
def test_rkd_matches_equations_in_float64(kind, cls, naive):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    kwargs = {"chunk_size": 3} if cls is RKDAngleLoss else {}
    for delta in (1.0, 0.3):
        loss = cls(loss=kind, delta=delta, **kwargs)(s, t).item()
        np.testing.assert_allclose(loss, naive(s.numpy(), t.numpy(), kind, delta), rtol=1e-6)


@pytest.mark.parametrize("rank, sign", [("near", -1.0), ("far", 1.0)])
def test_distance_ce_sign_matches_equation_and_near_ranks_the_nearest_highest(rank, sign):
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    loss = RKDDistanceLoss("ce", ce_rank=rank)(s, t).item()
    np.testing.assert_allclose(loss, naive_rkd_d(s.numpy(), t.numpy(), "ce", sign=sign), rtol=1e-6)
    # the teacher's target of sample 0 puts its largest mass on its nearest (near) / farthest (far) neighbour
    d = naive_dist(t.numpy())[0, 1:]
    target = softmax(sign * d / 0.04)
    assert np.argmax(target) == (np.argmin(d) if rank == "near" else np.argmax(d))


@pytest.mark.parametrize("kind", ["huber", "ce"])
@pytest.mark.parametrize("cls, naive", [(RKDDistanceLoss, naive_rkd_d), (RKDAngleLoss, naive_rkd_a)])
def test_rows_and_teacher_temperature_match_equations(kind, cls, naive):
    """``rows`` keeps the relations of those samples (per group, then averaged over groups);
    ``teacher_temp`` in forward replaces the constructor's."""
    g = torch.Generator().manual_seed(6)
    s, t = (torch.randn(2, 7, 5, generator=g, dtype=torch.float64) for _ in range(2))
    rows = torch.zeros(2, 7, dtype=torch.bool)
    rows[0, [1, 4]] = True
    rows[1, [0, 2, 3, 6]] = True
    kwargs = {"chunk_size": 3} if cls is RKDAngleLoss else {}
    out = cls(loss=kind, **kwargs)(s, t, teacher_temp=0.07, rows=rows).item()
    want = np.mean(
        [naive(s[i].numpy(), t[i].numpy(), kind, tt=0.07, rows=rows[i].nonzero()[:, 0].tolist()) for i in range(2)]
    )
    np.testing.assert_allclose(out, want, rtol=1e-6)
    with pytest.raises(ValueError, match="rows must be a bool tensor"):
        cls(loss=kind)(s, t, rows=rows[:, :3])


def test_invariances():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(9, 6, generator=g, dtype=torch.float64), torch.randn(9, 6, generator=g, dtype=torch.float64)
    for kind in ("huber", "ce"):
        d, a = RKDDistanceLoss(kind), RKDAngleLoss(kind, chunk_size=4)
        torch.testing.assert_close(d(s * 3.7, t * 0.2), d(s, t))
        torch.testing.assert_close(a(s * 2.0 + 5.0, t * 0.5 - 1.0), a(s, t))
        # and the structure is not trivially constant
        assert d(s, t) > 0 and a(s, t) > 0
    assert RKDDistanceLoss()(t, t).item() < 1e-12 and RKDAngleLoss()(t, t).item() < 1e-12


@pytest.mark.parametrize("cls", [RKDDistanceLoss, RKDAngleLoss])
def test_gradient_reaches_student_only_and_is_correct(cls):
    g = torch.Generator().manual_seed(2)
    s = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    loss_fn = cls("huber")
    loss_fn(s, t).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, t.detach()), (s.detach().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda x: cls("ce")(x, t.detach()), (s.detach().requires_grad_(),))


def test_angle_chunking_and_half_precision_inputs():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    ref = RKDAngleLoss(chunk_size=20)(s, t)
    torch.testing.assert_close(RKDAngleLoss(chunk_size=3)(s, t), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = RKDAngleLoss()(s.bfloat16(), t.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


@pytest.mark.slow
def test_angle_loss_batch_512_at_ibot_width_fits_in_4gb():
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "rkd_memory.py"
    out = subprocess.run(
        [sys.executable, str(script), "--child", "angle", "512", "65536"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["peak_extra_mb"] < 4096


@pytest.mark.parametrize("kind", ["huber", "ce"])
@pytest.mark.parametrize("cls", [RKDDistanceLoss, RKDAngleLoss])
def test_leading_dims_are_independent_groups(cls, kind):
    g = torch.Generator().manual_seed(4)
    s, t = (
        torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64),
    )
    fn = cls(kind)
    per_group = torch.stack([fn(s[a, b], t[a, b]) for a in range(2) for b in range(3)]).mean()
    torch.testing.assert_close(fn(s, t), per_group)
