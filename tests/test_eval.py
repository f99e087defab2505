import numpy as np
import torch
import torch.nn.functional as F

from sslkd.eval import knn_classify, linear_probe


def naive_knn(ftr, ltr, fte, k, T, C):
    ftr = F.normalize(ftr.double(), dim=1).numpy()
    fte = F.normalize(fte.double(), dim=1).numpy()
    preds = []
    for x in fte:
        sim = ftr @ x
        idx = np.argsort(-sim, kind="stable")[:k]
        votes = np.zeros(C)
        for j in idx:
            votes[ltr[j]] += np.exp(sim[j] / T)
        preds.append(np.argsort(-votes, kind="stable")[:5])
    return np.array(preds)


def test_knn_matches_naive_and_is_chunk_invariant():
    g = torch.Generator().manual_seed(0)
    ftr, fte = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    ltr = torch.randint(0, 7, (300,), generator=g)
    lte = torch.randint(0, 7, (50,), generator=g)
    preds = naive_knn(ftr, ltr.numpy(), fte, 20, 0.07, 7)
    top1 = 100 * np.mean(preds[:, 0] == lte.numpy())
    top5 = 100 * np.mean([t in p for p, t in zip(preds, lte.numpy())])
    for chunk in (7, 256):
        res = knn_classify(ftr, ltr, fte, lte, k=20, temperature=0.07, num_classes=7, chunk_size=chunk)
        assert abs(res["top1"] - top1) < 1e-9 and abs(res["top5"] - top5) < 1e-9


def test_knn_and_linear_on_separable_data():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 32, generator=g) * 3
    ltr, lte = torch.arange(500) % 5, torch.arange(100) % 5
    ftr = centres[ltr] + torch.randn(500, 32, generator=g)
    fte = centres[lte] + torch.randn(100, 32, generator=g)
    assert knn_classify(ftr, ltr, fte, lte)["top1"] > 95
    assert linear_probe(ftr, ltr, fte, lte, epochs=20)["top1"] > 95
    # shuffled labels: chance level
    assert linear_probe(ftr, ltr[torch.randperm(500, generator=g)], fte, lte, epochs=20)["top1"] < 45
