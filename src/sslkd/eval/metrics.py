"""Top-1 / top-5 accuracy, the one place every protocol counts hits."""

from __future__ import annotations

import torch


class TopK:
    """Top-1 and top-5 accuracy (%) accumulated over batches of class scores (with fewer than five
    classes, top-5 is top-all: 100%)."""

    def __init__(self) -> None:
        self.hits1 = self.hits5 = self.n = 0

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Count a batch: ``scores`` ``[N, C]`` (any monotone score: logits, votes), ``labels``
        ``[N]``. Returns the top-1 predictions ``[N]``."""
        top = scores.topk(min(5, scores.shape[1]), dim=1).indices
        truth = labels.to(top.device).view(-1, 1)
        self.hits1 += int((top[:, :1] == truth).sum())
        self.hits5 += int((top == truth).any(dim=1).sum())
        self.n += len(truth)
        return top[:, 0]

    def result(self) -> dict[str, float]:
        if not self.n:
            raise ValueError("no test sample was scored")
        return {"top1": 100.0 * self.hits1 / self.n, "top5": 100.0 * self.hits5 / self.n}


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``{"top1", "top5"}`` (%) of class scores ``[N, C]`` against ``labels`` ``[N]``."""
    acc = TopK()
    acc.update(scores, labels)
    return acc.result()
