"""Relational knowledge distillation (Park et al., 2019) as self-supervised losses.

Instead of matching each student output to the teacher's output for the same image, the
student matches the *structure* of the batch: the normalised pairwise distances (RKD-D) or the
angles of every triplet (RKD-A). Both compare structures with Huber (smooth L1, as in RKD) or
with the cross-entropy between row-wise softmax distributions (the masked-relational-KD paper's
variant, as iBOT compares outputs). The teacher side never receives gradients, and the
structures are computed in float32 (float64 inputs stay float64) even under autocast.

Both losses take ``rows [..., B]`` (bool, optional): only the relations *of* those samples enter
the loss (the rows of the structure; every other sample still serves as a column, and the
distance normaliser ``mu`` is the whole group's), e.g. the masked patch tokens of an image, so that
the student predicts how each masked token relates to the rest (masked image modelling on
structures) and visible-visible pairs, which the student sees, are left out. ``teacher_temp``
given to ``forward`` overrides the constructor's (a schedule).
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


def _offdiag_ce(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, keep: torch.Tensor, dims: int
) -> torch.Tensor:
    """Row cross-entropy ``-sum_j p_t log p_s`` over entries where ``keep`` (rows: last dim),
    summed over the last ``dims`` dims (the leading ones are groups)."""
    neg = torch.finfo(student_logits.dtype).min
    log_p_s = F.log_softmax(student_logits.masked_fill(~keep, neg), dim=-1)
    p_t = F.softmax(teacher_logits.masked_fill(~keep, neg), dim=-1)
    return -(p_t * log_p_s.masked_fill(~keep, 0)).sum(tuple(range(-dims, 0)))


def _group_mean(total: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """Each group's sum over its count of relations, averaged over groups (a group without rows
    adds 0): a batch split into parts of whole groups averages to the whole batch's value."""
    if isinstance(count, torch.Tensor):
        count = count.clamp_min(1)
    return (total / count).mean()


class RKDDistanceLoss(nn.Module):
    r"""Distance-wise RKD.

    .. math::
        \psi_D(t_i, t_j) = \frac{\lVert t_i - t_j \rVert_2}{\mu},\quad
        \mu = \frac{1}{B(B-1)} \sum_{i \ne j} \lVert t_i - t_j \rVert_2

    (student and teacher each normalised by their own ``mu``, clamped to ``>= eps``).
    ``loss="huber"``: mean over pairs ``i != j`` of ``smooth_l1(psi_D(s), psi_D(t); delta)``.
    ``loss="ce"``: mean over rows ``i`` of ``-sum_{j != i} softmax(c psi_D(t)_i / tau_t)_j
    log softmax(c psi_D(s)_i / tau_s)_j`` (diagonal excluded from both softmaxes), with
    ``c = -1`` (``ce_rank="near"``, the default): each row is a distribution over the sample's
    neighbours that ranks the *nearest* highest, a similarity, as the paper's "structure of
    similar data" asks; ``c = +1`` (``"far"``, sslkd before 2026-12-07) ranks the farthest highest.

    ``forward(student [..., B, D], teacher [..., B, D], teacher_temp=None, rows [..., B] | None)
    -> scalar``: leading dims are independent groups (e.g. the patch tokens of each image); each
    group's relations (pairs for Huber, rows for CE) are averaged, then the groups.
    """

    def __init__(
        self,
        loss: str = "huber",
        delta: float = 1.0,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        eps: float = 1e-6,
        ce_rank: str = "near",
    ) -> None:
        super().__init__()
        if loss not in ("huber", "ce"):
            raise ValueError(f"loss must be 'huber' or 'ce', got '{loss}'")
        if ce_rank not in ("near", "far"):
            raise ValueError(f"ce_rank must be 'near' or 'far', got '{ce_rank}'")
        self.loss, self.delta, self.eps = loss, delta, eps
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.ce_sign = -1.0 if ce_rank == "near" else 1.0

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., B, D] -> psi_D [..., B, B]`` (zero diagonal), ``mu`` per group."""
        d = pairwise_distances(_upcast(x))
        b = x.shape[-2]
        mu = (d.sum((-1, -2), keepdim=True) / (b * (b - 1))).clamp_min(self.eps)
        return d / mu

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        teacher_temp: float | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rows = _check(student, teacher, rows)
        tau_t = self.teacher_temp if teacher_temp is None else teacher_temp
        with torch.autocast(student.device.type, enabled=False):
            with torch.no_grad():
                t = self.potential(teacher.detach())
            s = self.potential(student)
            b = s.shape[-1]
            keep = ~torch.eye(b, dtype=torch.bool, device=s.device)
            if rows is not None:
                keep = keep & rows[..., :, None]
            n_rows = b if rows is None else rows.sum(-1)
            if self.loss == "huber":
                total = (F.smooth_l1_loss(s, t, beta=self.delta, reduction="none") * keep).sum((-1, -2))
                return _group_mean(total, n_rows * (b - 1))
            c = self.ce_sign
            return _group_mean(_offdiag_ce(c * s / self.student_temp, c * t / tau_t, keep, 2), n_rows)


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
    ``k not in {i, j}`` (the trivial ``k = i`` angle of 1 excluded), averaged over rows. (A cosine
    is a similarity: the softmax ranks the ``k`` nearest in direction to ``i`` highest.)

    ``forward(student [..., B, D], teacher [..., B, D], teacher_temp=None, rows [..., B] | None)
    -> scalar``: leading dims are independent groups, each averaged over its relations, then the
    groups; ``rows`` keeps the triplets whose ``i`` is a row sample.
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

    def _chunk_loss(
        self, gs: torch.Tensor, gt: torch.Tensor, start: int, stop: int, tau_t: float, rows: torch.Tensor | None
    ) -> torch.Tensor:
        s = self.angles(gs, start, stop)
        with torch.no_grad():
            t = self.angles(gt, start, stop)
        row_mask = None if rows is None else rows[..., None, :, None]  # [..., 1, B(i), 1]
        if self.loss == "huber":  # angles with i == j or k == j are 0 on both sides: they add 0
            err = F.smooth_l1_loss(s, t, beta=self.delta, reduction="none")
            return (err if row_mask is None else err * row_mask).sum((-1, -2, -3))
        b = gs.shape[-1]
        j = torch.arange(start, stop, device=gs.device)
        vertex = F.one_hot(j, b).bool()
        valid = ~(vertex[:, :, None] | vertex[:, None, :])  # i != j and k != j
        keep = valid & ~torch.eye(b, dtype=torch.bool, device=gs.device)[None]
        if row_mask is not None:
            keep = keep & row_mask
        return _offdiag_ce(s / self.student_temp, t / tau_t, keep, 3)

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        teacher_temp: float | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rows = _check(student, teacher, rows)
        tau_t = self.teacher_temp if teacher_temp is None else teacher_temp
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
            total = gs.new_zeros(gs.shape[:-2])  # per group
            # a chunk's [J, B, B] temporaries should stay cache-sized on a CPU (B=512 at D=8192: 13 s
            # with 32 vertices per chunk, 3.6 s with 4); a GPU wants few, large kernels
            cap = _CHUNK_ELEMENTS[gs.device.type == "cuda"]
            step = max(1, min(self.chunk_size, cap // (groups * b * b)))
            for start in range(0, b, step):
                stop = min(b, start + step)
                args = (gs, gt, start, stop, tau_t, rows)
                if gs.requires_grad:
                    total = total + checkpoint(self._chunk_loss, *args, use_reentrant=False)
                else:
                    total = total + self._chunk_loss(*args)
        per_row = (b - 1) ** 2 if self.loss == "huber" else b - 1  # (j, k) or j per row i
        return _group_mean(total, per_row * (b if rows is None else rows.sum(-1)))


def _check(student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor | None:
    """Refuse inputs a relational loss cannot take; returns ``rows`` ([..., B] bool or None)."""
    if student.ndim < 2 or student.shape != teacher.shape:
        raise ValueError(
            f"expected student and teacher [..., B, D] of the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.shape[-2] < 2:
        raise ValueError("relational losses need at least 2 samples")
    if rows is not None and (rows.shape != student.shape[:-1] or rows.dtype != torch.bool):
        want = tuple(student.shape[:-1])
        raise ValueError(f"rows must be a bool tensor of shape {want}, got {rows.dtype} {tuple(rows.shape)}")
    return rows
