"""Losses as plain ``nn.Module``s, usable outside sslkd."""

from sslkd.losses.dino import DINOLoss
from sslkd.losses.ibot import IBOTPatchLoss
from sslkd.losses.rkd import RKDAngleLoss, RKDDistanceLoss

__all__ = ["DINOLoss", "IBOTPatchLoss", "RKDAngleLoss", "RKDDistanceLoss"]
