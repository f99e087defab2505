"""Evaluation protocols on frozen backbones."""

from sslkd.eval.features import extract_features, normalize_batch
from sslkd.eval.knn import knn_classify
from sslkd.eval.linear import linear_probe
from sslkd.eval.protocols import PROTOCOLS, evaluate

__all__ = ["PROTOCOLS", "evaluate", "extract_features", "knn_classify", "linear_probe", "normalize_batch"]
