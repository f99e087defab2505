"""Losses as plain ``nn.Module``s, usable outside sslkd."""

from sslkd.losses.dino import DINOLoss
from sslkd.losses.dmt import SpatialFusionLoss, TokenFusionLoss
from sslkd.losses.ibot import IBOTPatchLoss
from sslkd.losses.mae import MAELoss, patchify
from sslkd.losses.mocov3 import MoCoV3Loss
from sslkd.losses.rkd import RKDAngleLoss, RKDDistanceLoss
from sslkd.losses.seed import EmbeddingRegressionLoss, FeatureQueue, InfoNCELoss, SEEDLoss

__all__ = [
    "DINOLoss",
    "EmbeddingRegressionLoss",
    "FeatureQueue",
    "IBOTPatchLoss",
    "InfoNCELoss",
    "MAELoss",
    "MoCoV3Loss",
    "RKDAngleLoss",
    "RKDDistanceLoss",
    "SEEDLoss",
    "SpatialFusionLoss",
    "TokenFusionLoss",
    "patchify",
]
