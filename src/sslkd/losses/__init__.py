"""Losses as plain ``nn.Module``s, usable outside sslkd."""

from sslkd.losses.dino import DINOLoss

__all__ = ["DINOLoss"]
