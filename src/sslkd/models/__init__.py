"""Backbones (one interface over timm) and projection heads."""

from sslkd.models.backbone import BACKBONES, Backbone, CNNBackbone, ViTBackbone, build_backbone
from sslkd.models.heads import DINOHead, WeightNormLinear

__all__ = ["BACKBONES", "Backbone", "CNNBackbone", "DINOHead", "ViTBackbone", "WeightNormLinear",
           "build_backbone"]
