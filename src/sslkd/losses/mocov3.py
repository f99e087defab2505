"""MoCo v3's contrastive loss (Chen, Xie & He, 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslkd.distributed import gather_batch, rank


class MoCoV3Loss(nn.Module):
    r"""Symmetric InfoNCE between the online queries and the momentum encoder's keys of the other view:

    .. math::
        L = \mathrm{ctr}(q_1, k_2) + \mathrm{ctr}(q_2, k_1), \qquad
        \mathrm{ctr}(q, k) = 2\tau \cdot \frac{1}{B} \sum_i -\log
            \frac{\exp(q_i \cdot k_i / \tau)}{\sum_j \exp(q_i \cdot k_j / \tau)}

    with ``q`` and ``k`` L2-normalised, the keys of every process as negatives (gathered without
    gradient; the positives of process ``r`` sit at offset ``r * B``), and ``2τ`` the paper's
    scaling that makes the gradient magnitude independent of ``τ``. Computed in float32.
    ``forward(q1 [B, D], q2 [B, D], k1 [B, D], k2 [B, D]) -> scalar``; keys get no gradient.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def ctr(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q = F.normalize(q.float(), dim=-1)
        k = F.normalize(gather_batch(k.detach().float(), differentiable=False), dim=-1)
        logits = q @ k.T / self.temperature
        target = torch.arange(len(q), device=q.device) + rank() * len(q)
        return 2 * self.temperature * F.cross_entropy(logits, target)

    def forward(self, q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
        return self.ctr(q1, k2) + self.ctr(q2, k1)
