"""SEED (Fang et al., ICLR 2021): the student matches the teacher's similarity distribution over a
queue of teacher embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslkd.distributed import gather_batch


def _f32(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (half precision upcast; float64 kept, for tests against a float64 formula)."""
    return x if x.dtype == torch.float64 else x.float()


class SEEDLoss(nn.Module):
    r"""Cross-entropy between the teacher's and the student's softmax similarity distributions.

    With ``z^S`` and ``z^T`` the L2-normalised student and teacher embeddings of image ``i`` and
    ``D^+ = [z^T_i, d_1, ..., d_K]`` (the teacher's own embedding, then the queue):

    .. math::
        p^T_j = \frac{\exp(z^T_i \cdot D^+_j / \tau_T)}{\sum_k \exp(z^T_i \cdot D^+_k / \tau_T)}, \quad
        p^S_j = \frac{\exp(z^S_i \cdot D^+_j / \tau_S)}{\sum_k \exp(z^S_i \cdot D^+_k / \tau_S)}, \quad
        L = -\frac{1}{B}\sum_i \sum_j p^T_j \log p^S_j

    As ``tau_t -> 0`` the teacher distribution becomes one-hot on its own embedding and the loss
    is InfoNCE with ``z^T_i`` as the positive. The paper's review gives ``tau_t = 0.01`` (default);
    the official code defaults to ``1e-4``. Computed in float32; the teacher side and the queue
    get no gradient.

    ``forward(student [B, D], teacher [B, D], queue [K, D]) -> scalar`` (inputs need not be normalised).
    """

    def __init__(self, tau_s: float = 0.2, tau_t: float = 0.01) -> None:
        super().__init__()
        if tau_s <= 0 or tau_t <= 0:
            raise ValueError(f"temperatures must be positive, got tau_s={tau_s}, tau_t={tau_t}")
        self.tau_s, self.tau_t = tau_s, tau_t

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        s = F.normalize(_f32(student), dim=-1)
        t = F.normalize(_f32(teacher.detach()), dim=-1)
        q = F.normalize(queue.detach().to(s.dtype), dim=-1)
        s_logits = torch.cat([(s * t).sum(-1, keepdim=True), s @ q.T], 1) / self.tau_s
        t_logits = torch.cat([(t * t).sum(-1, keepdim=True), t @ q.T], 1) / self.tau_t
        return -(t_logits.softmax(-1) * s_logits.log_softmax(-1)).sum(-1).mean()


class EmbeddingRegressionLoss(nn.Module):
    """The paper's "simple" baselines: ``l2`` = mean squared distance between the L2-normalised
    embeddings, ``cosine`` = 1 - cosine similarity, averaged over the batch.
    ``forward(student [B, D], teacher [B, D]) -> scalar``."""

    def __init__(self, kind: str = "l2") -> None:
        super().__init__()
        if kind not in ("l2", "cosine"):
            raise ValueError(f"kind must be 'l2' or 'cosine', got '{kind}'")
        self.kind = kind

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s = F.normalize(_f32(student), dim=-1)
        t = F.normalize(_f32(teacher.detach()), dim=-1)
        if self.kind == "l2":
            return (s - t).pow(2).sum(-1).mean()
        return (1 - (s * t).sum(-1)).mean()


class InfoNCELoss(nn.Module):
    r"""In-batch InfoNCE between two views' embeddings (symmetric), the student's own SSL term in
    SEED's "SEED + SSL" ablation: ``L = ½ [CE(z1 z2ᵀ/τ, I) + CE(z2 z1ᵀ/τ, I)]``.
    ``forward(z1 [B, D], z2 [B, D]) -> scalar``."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        a, b = F.normalize(_f32(z1), dim=-1), F.normalize(_f32(z2), dim=-1)
        logits = a @ b.T / self.temperature
        target = torch.arange(len(a), device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class FeatureQueue(nn.Module):
    """A FIFO queue of ``size`` embeddings ``[K, D]`` (a buffer: checkpointed with the method).

    Starts as random unit vectors (as SEED's and MoCo's code do). ``enqueue(x [B, D])`` writes the
    batch after the oldest entries, wrapping around for any ``K`` (not only multiples of ``B``);
    under ``torch.distributed`` it enqueues the batches of every process, in rank order."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=-1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor) -> None:
        x = gather_batch(F.normalize(x.detach().float(), dim=-1), differentiable=False)
        k = len(self.queue)
        x = x[-k:]  # a batch larger than the queue keeps its newest rows
        idx = (int(self.ptr) + torch.arange(len(x), device=x.device)) % k
        self.queue[idx] = x
        self.ptr.fill_((int(self.ptr) + len(x)) % k)
