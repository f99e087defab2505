import numpy as np
import torch

from sslkd.losses import DINOLoss


def naive_dino(student, teacher, center, tau_s, tau_t):
    """DINO's loss written as in the paper, in float64 numpy."""
    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    total, n = 0.0, 0
    for it in range(t.shape[0]):
        q = softmax((t[it] - center) / tau_t)
        for iv in range(s.shape[0]):
            if iv == it:
                continue
            log_p = np.log(softmax(s[iv] / tau_s))
            total += np.mean(np.sum(-q * log_p, axis=-1))
            n += 1
    return total / n


def test_dino_loss_matches_formula_and_centre_steps_once():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    loss = DINOLoss(32, student_temp=0.1, center_momentum=0.9)
    loss.center.copy_(torch.randn(1, 32, generator=g) * 0.1)
    c0 = loss.center.clone()
    out = loss(s, t, teacher_temp=0.04)
    ref = naive_dino(s.numpy(), t.numpy(), c0.numpy(), 0.1, 0.04)
    np.testing.assert_allclose(out.item(), ref, rtol=1e-5)
    assert torch.equal(loss.center, c0)  # forward never moves the centre
    # two micro-batches then one update == one update with the mean of both
    loss(s, t * 2, 0.04)
    loss.update_center()
    expected = 0.9 * c0 + 0.1 * (t.mean((0, 1)) + (2 * t).mean((0, 1))) / 2
    torch.testing.assert_close(loss.center, expected)


def test_dino_loss_gradient_only_through_student():
    s = torch.randn(4, 3, 8, requires_grad=True)
    t = torch.randn(2, 3, 8, requires_grad=True)
    DINOLoss(8)(s, t, 0.04).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_dino_loss_stays_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 8, 64, generator=g) * 5, torch.randn(2, 8, 64, generator=g) * 5
    ref = DINOLoss(64)(s, t, 0.04)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DINOLoss(64)(s, t, 0.04)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
