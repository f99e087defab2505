"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018; DINO's protocol)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the k of DINO (20) and of MOKD's tables (the best of 10, 20, 100, 200), the CLI's and tables' default
DEFAULT_KS = (10, 20, 100, 200)


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 256,
    return_predictions: bool = False,
) -> dict:
    """Top-1/top-5 accuracy (%) of weighted kNN with cosine similarity (and, with
    ``return_predictions``, the predicted class of every test sample under ``"predictions"``).

    Each test sample votes over its ``k`` most similar training samples with weight
    ``exp(sim / T)``; the class with the largest summed weight wins. Test samples are processed in
    chunks of ``chunk_size`` so that memory is ``chunk_size x N_train`` (50k x 10k fits easily).
    """
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train_features))
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    train_labels = train_labels.to(train.device)
    correct1 = correct5 = 0
    preds = []
    for i in range(0, len(test), chunk_size):
        sim = test[i : i + chunk_size] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        pred = votes.topk(min(5, num_classes), dim=1).indices
        truth = test_labels[i : i + chunk_size].to(pred.device).view(-1, 1)
        correct1 += (pred[:, :1] == truth).sum().item()
        correct5 += (pred == truth).any(dim=1).sum().item()
        preds.append(pred[:, 0].cpu())
    n = len(test)
    out = {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n}
    if return_predictions:
        out["predictions"] = torch.cat(preds)
    return out
