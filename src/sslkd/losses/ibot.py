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
    view ``v`` with at least one masked patch (by default; ``denominator`` replaces ``|B_v|``:
    iBOT's code, and sslkd's iBOT by default, divides by the whole batch, images without a masked
    patch adding 0). The centre (EMA of the teacher's mean patch
    output) is updated by :meth:`update_center`, once per optimiser step. Softmax in float32.

    ``forward(student [V, B, N, K], teacher [V, B, N, K], masks [V, B, N] bool, teacher_temp,
    denominator [V] | None, teacher_mean [K] | None) -> scalar``. Student and teacher may instead be
    the masked rows alone, ``[M, K]`` in ``masks.nonzero()`` order (nothing else enters the loss);
    then ``teacher_mean``, the teacher's mean output over all patches, feeds the centre.
    ``denominator`` replaces ``|B_v|`` when the batch is one shard of a larger one (processes,
    accumulated micro-batches): pass the whole batch's count divided by the number of shards, so
    that the mean over shards is the whole batch's loss.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(out_dim, student_temp, center_momentum)

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        masks: torch.Tensor,
        teacher_temp: float,
        denominator: torch.Tensor | None = None,
        teacher_mean: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rows = student.dim() == 2
        if student.shape != teacher.shape or (
            masks.shape != student.shape[:3] if not rows else masks.dim() != 3 or len(student) != int(masks.sum())
        ):
            raise ValueError(
                f"expected student/teacher [V, B, N, K] with masks [V, B, N], or the masked rows "
                f"[M, K] with masks holding M positions, got {tuple(student.shape)}, "
                f"{tuple(teacher.shape)}, {tuple(masks.shape)}"
            )
        if rows and teacher_mean is None:
            raise ValueError("masked rows [M, K] need teacher_mean (the mean over all patches) for the centre")
        teacher = teacher.detach()
        self.record(teacher if teacher_mean is None else teacher_mean.detach()[None])
        ce = -(
            self.teacher_probs(teacher, teacher_temp) * F.log_softmax(student.float() / self.student_temp, dim=-1)
        ).sum(-1)  # [V, B, N] or [M]
        m = masks.float()
        count = m.sum(-1)  # [V, B]
        if rows:  # sum each image's masked rows
            image = masks.flatten(0, 1).nonzero()[:, 0]
            total = ce.new_zeros(count.numel()).index_add_(0, image, ce).reshape(count.shape)
        else:
            total = (ce * m).sum(-1)
        per_image = total / count.clamp_min(1)
        has = (count > 0).float()
        den = has.sum(-1).clamp_min(1) if denominator is None else denominator.clamp_min(1e-12)
        per_view = (per_image * has).sum(-1) / den
        return per_view.mean()
