"""The teacher centring shared by DINO and iBOT losses."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class CenteredTeacherLoss(nn.Module):
    """Holds the centre ``c`` (a buffer) and the teacher's sharpened distribution
    ``softmax((g_t - c) / tau_t)`` in float32. ``c <- m c + (1 - m) mean(g_t)`` is applied by
    :meth:`update_center` with the mean of every batch recorded by :meth:`record` since the last
    update, so that gradient accumulation steps the centre once per optimiser step."""

    def __init__(self, out_dim: int, student_temp: float, center_momentum: float) -> None:
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.pending: list[torch.Tensor] = []

    def teacher_probs(self, teacher: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        return F.softmax((teacher.float() - self.center) / teacher_temp, dim=-1)

    def record(self, teacher: torch.Tensor) -> None:
        """Remember the mean teacher output over all leading dims of ``teacher [..., K]``."""
        self.pending.append(teacher.detach().float().reshape(-1, teacher.shape[-1]).mean(0))

    @torch.no_grad()
    def update_center(self) -> None:
        """Apply the EMA (all-reduced across processes when distributed); no-op without records."""
        if not self.pending:
            return
        batch_center = torch.stack(self.pending).mean(0, keepdim=True)
        self.pending.clear()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            batch_center /= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
