"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018; DINO's protocol)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sslkd.eval.metrics import TopK
from sslkd.eval.registry import Features, Protocol, register
from sslkd.schema import Positive, PositiveFloat

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
    acc, preds = TopK(), []
    for i in range(0, len(test), chunk_size):
        sim = test[i : i + chunk_size] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        preds.append(acc.update(votes, test_labels[i : i + chunk_size]).cpu())
    out: dict = acc.result()
    if return_predictions:
        out["predictions"] = torch.cat(preds)
    return out


@dataclass
class KnnOptions:
    k: tuple[Positive, ...] = field(
        default=DEFAULT_KS,
        metadata={
            "help": "neighbours, one or a list (MOKD's 10,20,100,200, DINO's 20 among them); the best is reported"
        },
    )
    temperature: PositiveFloat = field(default=0.07, metadata={"help": "temperature of the vote"})


@register
class KnnProtocol(Protocol):
    name = "knn"
    help = "weighted kNN on frozen features (cosine, best of several k)"
    Options = KnnOptions
    title, chosen = "Unsup kNN", "k"

    def score(self, features: Features, options: KnnOptions) -> dict:
        f = features
        per_k = {
            k: knn_classify(f.train, f.train_labels, f.test, f.test_labels, k, options.temperature, f.num_classes)
            for k in options.k
        }
        best = max(per_k, key=lambda k: per_k[k]["top1"])  # MOKD reports the best of k in {10, 20, 100, 200}
        out = {**per_k[best], "k": best}
        if len(per_k) > 1:
            out["per_k"] = {str(k): r for k, r in per_k.items()}
        return out

    def columns(self, result: dict) -> dict:
        per_k = {f"top1_k{k}": r["top1"] for k, r in result.get("per_k", {}).items()}
        return {**super().columns(result), **per_k}

    def describe(self, result: dict, options: KnnOptions) -> list[str]:
        ks = result.get("per_k", {})
        lines = [f"k={k}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%" for k, r in ks.items()]
        best = f" (best of {','.join(ks)})" if ks else ""
        return [*lines, f"kNN k={result['k']}{best} T={options.temperature:g}"]
