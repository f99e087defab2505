"""Frozen-feature evaluation in one place: embed the training and test images once, then score the
features with weighted kNN and/or a linear probe. The CLI's ``eval``, the kNN monitor during
pretraining, ``experiment`` tables, the HTML report and :func:`sslkd.evaluate` all call
:func:`evaluate`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sslkd.eval.features import extract_features
from sslkd.eval.knn import knn_classify
from sslkd.eval.linear import linear_probe

PROTOCOLS = ("knn", "linear")


def evaluate(
    backbone: torch.nn.Module,
    train,
    test,
    protocols: Sequence[str] = ("knn",),
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    size: int | None = None,
    device: torch.device | str = "cpu",
    k: int | Sequence[int] = 20,
    temperature: float = 0.07,
    linear_epochs: int = 100,
    linear_lr: float = 0.1,
    seed: int = 0,
    batch_size: int = 256,
    max_train: int | None = None,
    max_test: int | None = None,
    num_workers: int = 0,
    progress: bool = False,
    return_features: bool = False,
) -> dict:
    """Accuracy (%) of ``backbone``'s frozen CLS / pooled features of ``test``, learnt from ``train``.

    ``protocols``: any of ``knn`` (weighted kNN for each ``k``, cosine, temperature
    ``temperature``; the best ``k`` is reported, all under ``per_k`` when several) and ``linear``
    (:func:`~sslkd.eval.linear.linear_probe`). ``mean``/``std``: the normalisation the backbone
    was trained with (default: ``train``'s); ``size``: the evaluation image size; ``max_train``/
    ``max_test``: evenly spaced subsets. Returns ``{"knn": {top1, top5, k[, per_k]}, "linear":
    {top1, top5}, "train_images": n, "test_images": n}`` with the protocols asked for (and, with
    ``return_features``, ``"test_features": (features [n, D], labels [n])`` for plots)."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(unknown)}; available: {', '.join(PROTOCOLS)}")
    mean = train.mean if mean is None else mean
    std = train.std if std is None else std
    kw = dict(
        mean=mean, std=std, device=device, batch_size=batch_size, size=size, progress=progress, num_workers=num_workers
    )
    ftr, ltr = extract_features(backbone, train, max_samples=max_train, **kw)
    fte, lte = extract_features(backbone, test, max_samples=max_test, **kw)
    out: dict = {"train_images": len(ftr), "test_images": len(fte)}
    if "knn" in protocols:
        ks = [k] if isinstance(k, int) else list(k)
        per_k = {kk: knn_classify(ftr, ltr, fte, lte, kk, temperature, train.num_classes) for kk in ks}
        best = max(per_k, key=lambda kk: per_k[kk]["top1"])  # MOKD reports the best of k in {10, 20, 100, 200}
        out["knn"] = {**per_k[best], "k": best}
        if len(per_k) > 1:
            out["knn"]["per_k"] = {str(kk): r for kk, r in per_k.items()}
    if "linear" in protocols:
        out["linear"] = linear_probe(ftr, ltr, fte, lte, train.num_classes, linear_epochs, linear_lr, seed=seed)
    if return_features:
        out["test_features"] = (fte, lte)
    return out
