"""Backbones (one interface over timm) and projection heads."""

from sslkd.models.backbone import BACKBONES, Backbone, CNNBackbone, ViTBackbone, build_backbone
from sslkd.models.heads import DINOHead, IBOTHead, WeightNormLinear

__all__ = ["BACKBONES", "Backbone", "CNNBackbone", "DINOHead", "IBOTHead", "ViTBackbone", "WeightNormLinear",
           "build_backbone"]
