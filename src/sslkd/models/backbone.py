"""Backbones from timm behind one interface: ``forward_features(x, mask) -> (cls, tokens)``.

- ViTs (``vit_tiny``/``vit_small``/``vit_base``, any patch size, any input size via
  timm's dynamic position-embedding resampling) return the CLS token and the patch tokens after
  the final norm. A boolean patch mask replaces the masked patch embeddings by a learned mask
  token before the position embedding is added (iBOT/BEiT).
- CNNs (``resnet18/34/50/101``, ``mobilenetv3_large``, ``efficientnet_b0``) return the flattened
  last feature map as tokens and its average as ``cls``; ``small_stem`` swaps the stride-4 stem for
  a 3x3 stride-1 convolution (the usual CIFAR variant). A mask passed to a CNN is an error.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Annotated

import timm
import torch
from torch import nn

from sslkd.errors import ConfigError
from sslkd.schema import Positive, Range

VITS = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224", "vit_base": "vit_base_patch16_224"}
CNNS = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "mobilenetv3_large": "mobilenetv3_large_100",
    "efficientnet_b0": "efficientnet_b0",
}
BACKBONES = sorted(VITS) + sorted(CNNS)


@dataclass
class ModelConfig:
    backbone: str = "vit_tiny"  # one of BACKBONES (sslkd info lists them)
    patch_size: Positive = 4  # ViTs: patch side in pixels
    drop_path_rate: Annotated[float, Range(ge=0, lt=1)] = 0.1  # stochastic depth of the student (the teacher has none)
    small_stem: bool = True  # CNNs: 3x3 stride-1 stem without max-pool, for small images
    depth: Positive | None = None  # ViT depth override (None: the architecture's own)
    init_seed: int | None = None  # weights and drop-path seed (None: `seed`, which seeds data and masks)

    def validate(self, prefix: str = "model.") -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"{prefix}backbone: must be one of {', '.join(BACKBONES)} (got {self.backbone!r})")


def is_vit(name: str) -> bool:
    """Whether backbone ``name`` is a ViT (patch tokens, a mask token, a patch size)."""
    return name in VITS


class Backbone(nn.Module, abc.ABC):
    """Common interface. ``embed_dim``: width of ``cls`` and tokens; ``is_vit``."""

    embed_dim: int
    is_vit: bool

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, C, H, W]`` (+ ``mask [B, h, w]`` or ``[B, N]``) -> ``cls [B, D]``, ``tokens [B, N, D]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class ViTBackbone(Backbone):
    is_vit = True

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.embed_dim = vit.embed_dim
        self.patch_size = vit.patch_embed.patch_size[0]
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, vit.embed_dim))

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        vit = self.vit
        x = vit.patch_embed(x)  # [B, h, w, D] (dynamic_img_size)
        if mask is not None:
            b, h, w, _ = x.shape
            x = torch.where(mask.reshape(b, h, w, 1), self.mask_token.to(x.dtype), x)
        x = vit._pos_embed(x)
        x = vit.norm_pre(vit.patch_drop(x))
        x = vit.norm(vit.blocks(x))
        return x[:, 0], x[:, self.num_prefix_tokens :]

    def forward_visible(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The encoder on the CLS token and the patches ``ids [B, k]`` only (MAE): ``[B, 1 + k, D]``
        after the final norm; position embeddings are added before the others are dropped."""
        vit = self.vit
        t = vit._pos_embed(vit.patch_embed(x))  # [B, 1 + N, D]
        vis = torch.gather(t[:, 1:], 1, ids[..., None].expand(-1, -1, t.shape[-1]))
        return vit.norm(vit.blocks(vit.norm_pre(torch.cat([t[:, :1], vis], 1))))

    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's attention ``[B, heads, 1+N, 1+N]`` (softmax), computed explicitly."""
        vit = self.vit
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for blk in vit.blocks[:-1]:
            x = blk(x)
        attn = vit.blocks[-1].attn
        y = vit.blocks[-1].norm1(x)
        b, n, d = y.shape
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)


class CNNBackbone(Backbone):
    is_vit = False

    def __init__(self, net: nn.Module, in_chans: int) -> None:
        super().__init__()
        self.net = net
        # what forward_features really returns (timm's EfficientNet adds its 1x1 conv head there)
        with torch.no_grad():
            was = net.training
            self.embed_dim = net.eval().forward_features(torch.zeros(1, in_chans, 32, 32)).shape[1]
            net.train(was)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is not None:
            raise ValueError("a patch mask was passed to a CNN backbone; masked image modelling needs a ViT")
        fmap = self.net.forward_features(x)  # [B, C, h, w]
        tokens = fmap.flatten(2).transpose(1, 2)
        return tokens.mean(1), tokens


def build_backbone(
    name: str,
    img_size: int = 32,
    patch_size: int = 4,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    small_stem: bool = True,
    depth: int | None = None,
    **kwargs,
) -> Backbone:
    """Build backbone ``name`` (one of :data:`BACKBONES`) with random weights."""
    if name in VITS:
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not divisible by patch size {patch_size}")
        extra = {"depth": depth} if depth else {}
        vit = timm.create_model(
            VITS[name],
            pretrained=False,
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            **extra,
            **kwargs,
        )
        return ViTBackbone(vit)
    if name in CNNS:
        net = timm.create_model(
            CNNS[name],
            pretrained=False,
            in_chans=in_chans,
            num_classes=0,
            global_pool="",
            drop_path_rate=drop_path_rate,
            **kwargs,
        )
        if small_stem:
            apply_small_stem(net)
        return CNNBackbone(net, in_chans)
    raise ValueError(f"unknown backbone '{name}'; available: {', '.join(BACKBONES)}")


def apply_small_stem(net: nn.Module) -> None:
    """sslkd's small-image stem, in place: a ResNet's stem becomes a 3x3 stride-1 convolution
    without max-pool; a MobileNet's / EfficientNet's stem convolution loses its stride."""
    if hasattr(net, "conv1"):
        old = net.conv1
        net.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    else:
        net.conv_stem.stride = (1, 1)
