"""Relational knowledge distillation (Park et al., 2019) as self-supervised losses.

Instead of matching each student output to the teacher's output for the same image, the
student matches the *structure* of the batch: the normalised pairwise distances (RKD-D) or the
angles of every triplet (RKD-A). Both compare structures with Huber (smooth L1, as in RKD) or
with the cross-entropy between row-wise softmax distributions (the masked-relational-KD paper's
variant, as iBOT compares outputs). The teacher side never receives gradients, and the
structures are computed in float32 (float64 inputs stay float64) even under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

_EPS = 1e-12
_CHUNK_ELEMENTS = (2**20, 2**26)  # most elements of one chunk's angle tensor: (CPU, CUDA)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """``[..., B, D] -> [..., B, B]`` Euclidean distances from the Gram matrix (zero diagonal,
    finite gradients)."""
    g = x @ x.transpose(-1, -2)
    sq = g.diagonal(dim1=-2, dim2=-1)
    d2 = (sq[..., :, None] + sq[..., None, :] - 2 * g).clamp_min(_EPS)
    off = ~torch.eye(x.shape[-2], dtype=torch.bool, device=x.device)
    return d2.sqrt() * off


def _offdiag_ce(student_logits: torch.Tensor, teacher_logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Summed row cross-entropy ``-sum_j p_t log p_s`` over entries where ``keep`` (rows: last dim)."""
    neg = torch.finfo(student_logits.dtype).min
    log_p_s = F.log_softmax(student_logits.masked_fill(~keep, neg), dim=-1)
    p_t = F.softmax(teacher_logits.masked_fill(~keep, neg), dim=-1)
    return -(p_t * log_p_s.masked_fill(~keep, 0)).sum()


class RKDDistanceLoss(nn.Module):
    r"""Distance-wise RKD.

    .. math::
        \psi_D(t_i, t_j) = \frac{\lVert t_i - t_j \rVert_2}{\mu},\quad
        \mu = \frac{1}{B(B-1)} \sum_{i \ne j} \lVert t_i - t_j \rVert_2

    (student and teacher each normalised by their own ``mu``, clamped to ``>= eps``).
    ``loss="huber"``: mean over pairs ``i != j`` of ``smooth_l1(psi_D(s), psi_D(t); delta)``.
    ``loss="ce"``: mean over rows ``i`` of ``-sum_{j != i} softmax(psi_D(t)_i / tau_t)_j
    log softmax(psi_D(s)_i / tau_s)_j`` (diagonal excluded from both softmaxes).

    ``forward(student [..., B, D], teacher [..., B, D]) -> scalar``: leading dims are independent
    groups (e.g. the patch tokens of each image), averaged.
    """

    def __init__(
        self,
        loss: str = "huber",
        delta: float = 1.0,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if loss not in ("huber", "ce"):
            raise ValueError(f"loss must be 'huber' or 'ce', got '{loss}'")
        self.loss, self.delta, self.eps = loss, delta, eps
        self.student_temp, self.teacher_temp = student_temp, teacher_temp

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., B, D] -> psi_D [..., B, B]`` (zero diagonal), ``mu`` per group."""
        d = pairwise_distances(_upcast(x))
        b = x.shape[-2]
        mu = (d.sum((-1, -2), keepdim=True) / (b * (b - 1))).clamp_min(self.eps)
        return d / mu

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check(student, teacher)
        with torch.autocast(student.device.type, enabled=False):
            with torch.no_grad():
                t = self.potential(teacher.detach())
            s = self.potential(student)
            b = s.shape[-1]
            keep = ~torch.eye(b, dtype=torch.bool, device=s.device)
            if self.loss == "huber":
                return F.smooth_l1_loss(s[..., keep], t[..., keep], beta=self.delta)
            return _offdiag_ce(s / self.student_temp, t / self.teacher_temp, keep) / (s[..., 0].numel())


class RKDAngleLoss(nn.Module):
    r"""Angle-wise RKD with the vertex at ``j``.

    .. math::
        \psi_A(t_i, t_j, t_k) = \langle e^{ij}, e^{kj} \rangle,\quad
        e^{ij} = \frac{t_i - t_j}{\lVert t_i - t_j \rVert_2}

    computed from the Gram matrix ``G = T T^T``:
    ``<t_i - t_j, t_k - t_j> = G_ik - G_ij - G_jk + G_jj`` and
    ``||t_i - t_j||^2 = G_ii + G_jj - 2 G_ij``, so no ``B x B x D`` tensor is ever built. The
    ``B x B x B`` angle tensor is processed ``chunk_size`` vertices at a time (fewer when a
    chunk would exceed 2^20 elements on a CPU, 2^26 on a GPU), each chunk
    recomputed in the backward pass (activation checkpointing), so peak memory is
    ``O(B D + chunk_size B^2)``.

    ``loss="huber"``: mean over triplets with ``i != j`` and ``k != j`` of
    ``smooth_l1(psi_A(s), psi_A(t); delta)``.
    ``loss="ce"``: for each vertex ``j`` and row ``i != j``, cross-entropy between
    ``softmax_k(psi_A(t)_{ijk} / tau_t)`` and ``softmax_k(psi_A(s)_{ijk} / tau_s)`` over
    ``k not in {i, j}`` (the trivial ``k = i`` angle of 1 excluded), averaged over rows.

    ``forward(student [..., B, D], teacher [..., B, D]) -> scalar``: leading dims are independent
    groups, averaged.
    """

    def __init__(
        self,
        loss: str = "huber",
        delta: float = 1.0,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        chunk_size: int = 32,
    ) -> None:
        super().__init__()
        if loss not in ("huber", "ce"):
            raise ValueError(f"loss must be 'huber' or 'ce', got '{loss}'")
        self.loss, self.delta, self.chunk_size = loss, delta, chunk_size
        self.student_temp, self.teacher_temp = student_temp, teacher_temp

    @staticmethod
    def angles(g: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``psi_A`` for vertices ``j in [start, stop)``: ``[..., J, B(i), B(k)]``, zero where
        ``i == j`` or ``k == j``; ``g`` is ``[..., B, B]``."""
        b = g.shape[-1]
        j = torch.arange(start, stop, device=g.device)
        gj = g[..., j, :]  # [..., J, B]: G_jx
        gjj = g[..., j, j]  # [..., J]
        num = g[..., None, :, :] - gj[..., :, :, None] - gj[..., :, None, :] + gjj[..., :, None, None]
        diag = g.diagonal(dim1=-2, dim2=-1)[..., None, :]  # [..., 1, B]
        norm = (diag + gjj[..., :, None] - 2 * gj).clamp_min(_EPS).sqrt()  # [..., J, B]
        psi = num / (norm[..., :, :, None] * norm[..., :, None, :])
        vertex = F.one_hot(j, b).bool()  # [J, B]
        return psi.masked_fill(vertex[:, :, None] | vertex[:, None, :], 0.0)

    def _chunk_loss(self, gs: torch.Tensor, gt: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        s = self.angles(gs, start, stop)
        with torch.no_grad():
            t = self.angles(gt, start, stop)
        if self.loss == "huber":  # angles with i == j or k == j are 0 on both sides: they add 0
            return F.smooth_l1_loss(s, t, beta=self.delta, reduction="sum")
        b = gs.shape[-1]
        j = torch.arange(start, stop, device=gs.device)
        vertex = F.one_hot(j, b).bool()
        valid = ~(vertex[:, :, None] | vertex[:, None, :])  # i != j and k != j
        keep = valid & ~torch.eye(b, dtype=torch.bool, device=gs.device)[None]
        return _offdiag_ce(s / self.student_temp, t / self.teacher_temp, keep)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check(student, teacher)
        b = student.shape[-2]
        if b < 3:
            raise ValueError(f"RKD angles need at least 3 samples, got {b}")
        groups = student[..., 0, 0].numel()
        with torch.autocast(student.device.type, enabled=False):
            s = _upcast(student)
            gs = s @ s.transpose(-1, -2)
            with torch.no_grad():
                t = _upcast(teacher.detach())
                gt = t @ t.transpose(-1, -2)
            total = gs.new_zeros(())
            # a chunk's [J, B, B] temporaries should stay cache-sized on a CPU (B=512 at D=8192: 13 s
            # with 32 vertices per chunk, 3.6 s with 4); a GPU wants few, large kernels
            cap = _CHUNK_ELEMENTS[gs.device.type == "cuda"]
            step = max(1, min(self.chunk_size, cap // (groups * b * b)))
            for start in range(0, b, step):
                stop = min(b, start + step)
                if gs.requires_grad:
                    total = total + checkpoint(self._chunk_loss, gs, gt, start, stop, use_reentrant=False)
                else:
                    total = total + self._chunk_loss(gs, gt, start, stop)
        count = b * (b - 1) ** 2 if self.loss == "huber" else b * (b - 1)
        return total / (count * groups)


def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.ndim < 2 or student.shape != teacher.shape:
        raise ValueError(
            f"expected student and teacher [..., B, D] of the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.shape[-2] < 2:
        raise ValueError("relational losses need at least 2 samples")
