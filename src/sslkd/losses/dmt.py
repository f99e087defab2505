"""DMT's fusion distillation losses (multiple frozen teachers into one student ViT).

The teachers' tokens are fused by summation, ``z^T_n = sum_m z^(m)_n`` (agreement reinforced,
disagreement weakened); the student's tokens (after an adapter to the teachers' width ``D``)
match the fused tokens. Teachers never receive gradients.
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn


def fuse_teachers(student: torch.Tensor, teachers: list[torch.Tensor], resample: bool = False) -> torch.Tensor:
    """``sum_m teacher_m`` (detached, float32+) after checking every teacher's ``[B, 1 + N, D]``
    against the student's; a teacher with another token grid is an error unless ``resample``
    (bilinear resampling of its patch grid to the student's; the CLS token is kept)."""
    if not teachers:
        raise ValueError("no teacher tokens given")
    out = []
    for i, t in enumerate(teachers):
        t = t.detach()
        t = t if t.dtype == torch.float64 else t.float()
        if t.shape[0] != student.shape[0] or t.shape[-1] != student.shape[-1]:
            raise ValueError(
                f"teacher {i} tokens {tuple(t.shape)} do not match the student's {tuple(student.shape)} "
                f"in batch or width (an adapter must bring the student to the teachers' width)"
            )
        if t.shape[1] != student.shape[1]:
            if not resample:
                raise ValueError(
                    f"teacher {i} has {t.shape[1] - 1} patch tokens, the student {student.shape[1] - 1}: "
                    f"give both the same patch grid, or ask for resampling"
                )
            t = _resample(t, student.shape[1] - 1)
        out.append(t)
    return torch.stack(out).sum(0)


def _resample(tokens: torch.Tensor, n: int) -> torch.Tensor:
    b, m, d = tokens.shape
    g_in, g_out = math.isqrt(m - 1), math.isqrt(n)
    if g_in * g_in != m - 1 or g_out * g_out != n:
        raise ValueError(f"cannot resample {m - 1} patch tokens to {n}: both must be square grids")
    grid = tokens[:, 1:].transpose(1, 2).reshape(b, d, g_in, g_in)
    grid = F.interpolate(grid, size=(g_out, g_out), mode="bilinear", align_corners=False)
    return torch.cat([tokens[:, :1], grid.flatten(2).transpose(1, 2)], 1)


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor, dim: int) -> torch.Tensor:
    """``sum_dim softmax(p) * (log softmax(p) - log softmax(q))``: KL(P || Q) along ``dim``."""
    log_p = F.log_softmax(p_logits, dim=dim)
    return (log_p.exp() * (log_p - F.log_softmax(q_logits, dim=dim))).sum(dim)


class _FusionLoss(nn.Module, abc.ABC):
    """Shared by TFD and SFD: the fused target, then :meth:`compare` (KL or MSE)."""

    def __init__(self, kind: str = "kl", resample: bool = False) -> None:
        super().__init__()
        if kind not in ("kl", "mse"):
            raise ValueError(f"kind must be 'kl' or 'mse', got '{kind}'")
        self.kind, self.resample = kind, resample

    def forward(self, student: torch.Tensor, teachers: list[torch.Tensor]) -> torch.Tensor:
        s = student if student.dtype == torch.float64 else student.float()
        return self.compare(s, fuse_teachers(s, teachers, self.resample).to(s.dtype))

    @abc.abstractmethod
    def compare(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The loss between the student's tokens ``s`` and the fused teachers' ``t``."""


class TokenFusionLoss(_FusionLoss):
    r"""Token fusion distillation (TFD), per token, softmax over channels:

    .. math::
        L_{TFD} = \frac{1}{N+1}\sum_{n=0}^{N} \sum_j \varphi(z^S_n)_j
            \log\frac{\varphi(z^S_n)_j}{\varphi(z^T_n)_j},\qquad z^T_n = \sum_m z^{(m)}_n

    averaged over the batch. ``kind="mse"``: the mean squared error between ``z^S`` and ``z^T``
    instead (the paper's ablation). Float32 (float64 kept).
    ``forward(student [B, N+1, D], teachers: list of [B, N+1, D]) -> scalar``."""

    def compare(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(s, t) if self.kind == "mse" else _kl(s, t, dim=-1).mean()


class SpatialFusionLoss(_FusionLoss):
    r"""Spatial fusion distillation (SFD), per channel, softmax over the ``N`` patch positions
    (CLS excluded), ``f_c`` the ``c``-th channel across patches:

    .. math::
        L_{SFD} = \frac{1}{D}\sum_{c=0}^{D-1} \sum_{n} \varphi(f^S_c)_n
            \log\frac{\varphi(f^S_c)_n}{\varphi(f^T_c)_n}

    averaged over the batch; ``kind="mse"`` as in :class:`TokenFusionLoss`.
    ``forward(student [B, N+1, D], teachers: list of [B, N+1, D]) -> scalar``."""

    def compare(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, t = s[:, 1:], t[:, 1:]
        return F.mse_loss(s, t) if self.kind == "mse" else _kl(s, t, dim=1).mean()
