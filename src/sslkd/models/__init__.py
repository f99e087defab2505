"""Backbones (one interface over timm), projection heads, frozen teachers."""

from sslkd.models.backbone import (
    BACKBONES,
    Backbone,
    CNNBackbone,
    ModelConfig,
    ViTBackbone,
    build_backbone,
    is_backbone,
    is_vit,
)
from sslkd.models.encoder import Encoder, forward_views
from sslkd.models.heads import DINOHead, IBOTHead, THead, WeightNormLinear, moco_mlp, projection_mlp

__all__ = [
    "BACKBONES",
    "Backbone",
    "CNNBackbone",
    "DINOHead",
    "Encoder",
    "IBOTHead",
    "ModelConfig",
    "THead",
    "ViTBackbone",
    "WeightNormLinear",
    "build_backbone",
    "is_backbone",
    "forward_views",
    "is_vit",
    "moco_mlp",
    "projection_mlp",
]
