"""DINO's self-distillation loss with centring and sharpening (Caron et al., 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkd.losses.center import CenteredTeacherLoss


class DINOLoss(CenteredTeacherLoss):
    r"""Multi-crop cross-entropy between a centred, sharpened teacher and the student.

    .. math::
        L = \frac{1}{|P|} \sum_{(t, s) \in P} \frac{1}{B} \sum_b
            -\sum_k P_t(x_b)^{(k)} \log P_s(x_b)^{(k)},\quad
        P_t = \mathrm{softmax}((g_t - c)/\tau_t),\ P_s = \mathrm{softmax}(g_s/\tau_s)

    over pairs ``P`` of a teacher view ``t`` and a *different* student view ``s`` (teacher views
    are the first ``V_t`` student views). The centre ``c`` is an EMA of the teacher's batch mean,
    ``c <- m c + (1 - m) mean(g_t)``. It is *not* updated in :meth:`forward`: call
    :meth:`update_center` once per optimiser step (it averages every batch it was given since the
    last update, so gradient accumulation does not step the centre per micro-batch).
    Softmax and the loss run in float32 whatever the input dtype.

    ``forward(student [V_s, B, K], teacher [V_t, B, K], teacher_temp, record=True) -> scalar``
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(out_dim, student_temp, center_momentum)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float, record: bool = True
    ) -> torch.Tensor:
        if student.ndim != 3 or teacher.ndim != 3 or student.shape[1:] != teacher.shape[1:]:
            raise ValueError(
                f"expected student [V_s, B, K] and teacher [V_t, B, K], got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        log_p_s = F.log_softmax(student.float() / self.student_temp, dim=-1)
        p_t = self.teacher_probs(teacher.detach(), teacher_temp)
        if record:  # False: another student distils from this teacher (MOKD); its centre counts once
            self.record(teacher)
        # sum_{t != s} <p_t, -log p_s> via one matmul over views: [V_t, V_s] matrix of batch sums;
        # autocast would run that matmul in bf16
        with torch.autocast(student.device.type, enabled=False):
            ce = -torch.einsum("tbk,sbk->ts", p_t, log_p_s) / student.shape[1]
        vt, vs = teacher.shape[0], student.shape[0]
        keep = ~torch.eye(vt, vs, dtype=torch.bool, device=ce.device)
        return ce[keep].mean()
