"""Logistic regression on frozen features: scikit-learn's ``LogisticRegression`` (L-BFGS,
multinomial, L2) on standardised features, its inverse regularisation ``C`` chosen on a held-out
part of the training split as the linear probe's rate is, then fitted on the whole split. A
full-batch, deterministic second opinion on the SGD probe (the protocol of SimCLR's and BYOL's
transfer tables)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sslkd.eval.metrics import topk_accuracy
from sslkd.eval.registry import Features, Protocol, register
from sslkd.eval.training import validation_split
from sslkd.schema import Positive, PositiveFloat, Probability

LOGREG_CS = (0.01, 0.1, 1.0, 10.0, 100.0)  # inverse L2 strengths, a decade apart


def logistic_regression(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    C: float | Sequence[float] = LOGREG_CS,  # noqa: N803 - scikit-learn's name
    max_iter: int = 1000,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Top-1/top-5 test accuracy (%) and the ``C`` used; with several, the best on the held-out
    ``val_fraction`` of the training split (each one's under ``val_top1``)."""
    cs = [float(C)] if isinstance(C, (int, float)) else [float(c) for c in C]
    xtr, ytr = train_features.double().numpy(), train_labels.numpy()
    out: dict = {}
    if len(cs) > 1:
        if not 0 < val_fraction < 1:
            raise ValueError(f"a sweep of C chooses on held-out training images: val_fraction {val_fraction}")
        fit, val = (i.numpy() for i in validation_split(train_labels, val_fraction, seed))
        scores = []
        for c in cs:
            model = _fit(xtr[fit], ytr[fit], c, max_iter, seed)
            scores.append(100.0 * float(np.mean(model.predict(xtr[val]) == ytr[val])))
        out["val_top1"] = {f"{c:g}": s for c, s in zip(cs, scores)}
        cs = [cs[max(range(len(cs)), key=lambda i: (scores[i], -i))]]  # ties: the stronger regularisation
    model = _fit(xtr, ytr, cs[0], max_iter, seed)
    proba = np.zeros((len(test_features), int(max(ytr.max(), test_labels.max())) + 1))
    proba[:, model.classes_] = model.predict_proba(test_features.double().numpy())
    return {**topk_accuracy(torch.from_numpy(proba), test_labels), "C": cs[0], **out}


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, seed: int):
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():  # an unconverged fit is still a fit; the figure says how good
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


@dataclass
class LogRegOptions:
    C: tuple[PositiveFloat, ...] = field(  # noqa: N815 - scikit-learn's name
        default=LOGREG_CS,
        metadata={"help": "inverse L2 strengths, chosen on held-out training images; one value: no choice"},
    )
    max_iter: Positive = field(default=1000, metadata={"help": "L-BFGS iterations per fit"})
    val_fraction: Probability = field(
        default=0.1, metadata={"help": "share of the training split held out to choose C"}
    )


@register
class LogRegProtocol(Protocol):
    name = "logreg"
    help = "logistic regression on frozen features (scikit-learn, L-BFGS; C chosen on held-out training images)"
    Options = LogRegOptions
    title, chosen = "LogReg", "C"

    def score(self, features: Features, options: LogRegOptions) -> dict:
        f = features
        return logistic_regression(
            f.train, f.train_labels, f.test, f.test_labels, options.C, options.max_iter, options.val_fraction, f.seed
        )

    def describe(self, result: dict, options: LogRegOptions) -> list[str]:
        val = result.get("val_top1", {})
        lines = [f"C={c}: top-1 {a:.2f}% on held-out training images" for c, a in val.items()]
        chosen = f"C {result['C']:g}" + (f" (best of {','.join(val)})" if val else "")
        return [*lines, f"logistic regression (scikit-learn), {chosen}"]
