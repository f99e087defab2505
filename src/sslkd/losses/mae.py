"""MAE's pixel reconstruction loss (He et al., CVPR 2022)."""

from __future__ import annotations

import torch
from torch import nn


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, N, p*p*C]`` (row-major patches, pixels in (p, p, C) order)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


class MAELoss(nn.Module):
    r"""Mean squared error on the masked patches only:

    .. math::
        L = \frac{1}{\sum_{b,n} M_{bn}} \sum_{b,n} M_{bn} \frac{1}{P^2 C} \|\hat x_{bn} - \tilde x_{bn}\|^2,
        \qquad \tilde x_{bn} = (x_{bn} - \mu_{bn}) / \sqrt{\sigma^2_{bn} + 10^{-6}}

    with the target normalised per patch when ``norm_pix`` (the paper's default; else
    :math:`\tilde x = x`). ``forward(pred [B, N, P*P*C], target [B, N, P*P*C] (see :func:`patchify`),
    mask [B, N] (1 = masked)) -> scalar``, computed in float32.
    """

    def __init__(self, norm_pix: bool = True) -> None:
        super().__init__()
        self.norm_pix = norm_pix

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float(), target.float()
        if self.norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(-1)
        m = mask.float()
        return (per_patch * m).sum() / m.sum().clamp_min(1)
