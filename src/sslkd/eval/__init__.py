"""Evaluation protocols on frozen (or fine-tuned) backbones; :data:`PROTOCOLS` lists them."""

from sslkd.eval.features import extract_features, normalize_batch
from sslkd.eval.knn import knn_classify
from sslkd.eval.linear import linear_probe
from sslkd.eval.logreg import logistic_regression
from sslkd.eval.protocols import PROTOCOLS, evaluate
from sslkd.eval.registry import get_protocol, options_of

__all__ = [
    "PROTOCOLS",
    "evaluate",
    "extract_features",
    "get_protocol",
    "knn_classify",
    "linear_probe",
    "logistic_regression",
    "normalize_batch",
    "options_of",
]
