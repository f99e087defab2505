"""iBOT's masked-patch self-distillation loss (Zhou et al., 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkd.losses.center import CenteredTeacherLoss


class IBOTPatchLoss(CenteredTeacherLoss):
    r"""Cross-entropy between the teacher's (centred, sharpened) and the student's patch outputs
    at the masked positions of each view.

    .. math::
        L_{patch} = \frac{1}{V} \sum_v \frac{1}{|\mathcal{B}_v|} \sum_{b \in \mathcal{B}_v}
            \frac{1}{|M_{vb}|} \sum_{n \in M_{vb}} -P_t(u_{vbn}) \cdot \log P_s(\hat u_{vbn})

    where ``M_vb`` are the masked patches of image ``b`` in view ``v`` and ``B_v`` the images of
    view ``v`` with at least one masked patch. Images without a masked patch are left out of the
    average rather than counted as zero (iBOT's code divides by the whole batch, which makes the
    loss scale with the share of masked images). The centre (EMA of the teacher's mean patch
    output) is updated by :meth:`update_center`, once per optimiser step. Softmax in float32.

    ``forward(student [V, B, N, K], teacher [V, B, N, K], masks [V, B, N] bool, teacher_temp,
    denominator [V] | None) -> scalar``. ``denominator`` replaces ``|B_v|`` when the batch is one
    shard of a larger one (processes, accumulated micro-batches): pass the whole batch's count
    divided by the number of shards, so that the mean over shards is the whole batch's loss.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(out_dim, student_temp, center_momentum)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor,
                teacher_temp: float, denominator: torch.Tensor | None = None) -> torch.Tensor:
        if student.shape != teacher.shape or masks.shape != student.shape[:3]:
            raise ValueError(f"expected student/teacher [V, B, N, K] and masks [V, B, N], got "
                             f"{tuple(student.shape)}, {tuple(teacher.shape)}, {tuple(masks.shape)}")
        teacher = teacher.detach()
        self.record(teacher)
        ce = -(self.teacher_probs(teacher, teacher_temp)
               * F.log_softmax(student.float() / self.student_temp, dim=-1)).sum(-1)  # [V, B, N]
        m = masks.float()
        count = m.sum(-1)  # [V, B]
        per_image = (ce * m).sum(-1) / count.clamp_min(1)
        has = (count > 0).float()
        den = has.sum(-1).clamp_min(1) if denominator is None else denominator.clamp_min(1e-12)
        per_view = (per_image * has).sum(-1) / den
        return per_view.mean()
