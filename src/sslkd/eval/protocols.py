"""Evaluation in one place: embed the training and test images once, score the features with
every frozen protocol asked for (kNN, linear probe, logistic regression), and train a copy of the
backbone for the others (fine-tuning). The CLI's ``eval``, the kNN monitor during pretraining,
``experiment`` tables, the HTML report and :func:`sslkd.evaluate` all call :func:`evaluate`; the
protocols are those of :data:`~sslkd.eval.registry.PROTOCOLS` (importing this module registers
sslkd's own)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sslkd.eval import finetune, knn, linear, logreg  # noqa: F401 - each registers its protocol
from sslkd.eval.features import extract_features
from sslkd.eval.registry import PROTOCOLS, Context, Features, get_protocol, options_of

__all__ = ["PROTOCOLS", "evaluate", "evenly_spaced"]


def evaluate(
    backbone: torch.nn.Module,
    train,
    test,
    protocols: Sequence[str] | Mapping[str, Any] = ("knn",),
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    size: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    batch_size: int = 256,
    max_train: int | None = None,
    max_test: int | None = None,
    num_workers: int = 0,
    progress: bool = False,
    return_features: bool = False,
) -> dict:
    """Accuracy (%) of ``backbone`` on ``test``, learnt from ``train``, by each protocol asked for.

    ``protocols``: names (default options) or ``{name: options}`` (a mapping of option keys or the
    protocol's ``Options``; see ``sslkd eval <protocol> --help``). ``mean``/``std``: the normalisation
    the backbone was trained with (default: ``train``'s); ``size``: the evaluation image size;
    ``max_train``/``max_test``: evenly spaced subsets (all classes). A protocol that trains gets a
    copy: ``backbone`` is left as it was. Returns ``{<protocol>: {top1, top5, ...}, "train_images":
    n, "test_images": n}`` (and, with ``return_features``, ``"test_features": (features [n, D],
    labels [n])`` for plots)."""
    asked = (
        {name: options_of(name, None) for name in protocols}
        if not isinstance(protocols, Mapping)
        else {name: options_of(name, opts) for name, opts in protocols.items()}
    )
    mean = train.mean if mean is None else mean
    std = train.std if std is None else std
    out: dict = {}
    frozen = [name for name in asked if get_protocol(name).frozen]
    if frozen or return_features:
        kw = dict(mean=mean, std=std, device=device, batch_size=batch_size, size=size, num_workers=num_workers)
        ftr, ltr = extract_features(backbone, train, max_samples=max_train, progress=progress, **kw)
        fte, lte = extract_features(backbone, test, max_samples=max_test, progress=progress, **kw)
        feats = Features(ftr, ltr, fte, lte, train.num_classes, seed)
        out.update(train_images=len(ftr), test_images=len(fte))
        for name in frozen:
            out[name] = get_protocol(name).score(feats, asked[name])
        if return_features:
            out["test_features"] = (fte, lte)
    trained = [name for name in asked if not get_protocol(name).frozen]
    if trained:
        sub_train, sub_test = evenly_spaced(train, max_train), evenly_spaced(test, max_test)
        ctx = Context(
            sub_train, sub_test, tuple(mean), tuple(std), size or train.img_size, torch.device(device),
            seed, batch_size, num_workers, progress,
        )  # fmt: skip
        for name in trained:
            out[name] = get_protocol(name).run(copy.deepcopy(backbone), ctx, asked[name])
        out.setdefault("train_images", len(sub_train))
        out.setdefault("test_images", len(sub_test))
    return out


def evenly_spaced(dataset, n: int | None):
    """The evenly spaced ``n`` images of ``dataset`` (every class of a sorted set) that
    :func:`~sslkd.eval.features.extract_features` takes with ``max_samples=n``; all of it when ``n`` is None."""
    if n is None or n >= len(dataset):
        return dataset
    return dataset.subset(torch.linspace(0, len(dataset) - 1, n).long().numpy())
