"""Backbones from timm behind one interface: ``forward_features(x, mask) -> (cls, tokens)``.

``model.backbone`` is a short alias (:data:`BACKBONES`) or any timm model name. timm's ViT family
(``vision_transformer``, ``deit``: ViT, DeiT, their distilled and register variants) gets sslkd's
ViT interface with a mask token, what iBOT, MAE and DMT need; ``model.patch_size`` sets its patch.
Any other timm model (ConvNeXt, RegNet, EfficientNet, EVA, ...) is read through its
``forward_features``: a feature map (NCHW, or NHWC) or a token sequence.

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
from timm.models import is_model_in_modules
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
VIT_MODULES = ("vision_transformer", "deit")  # timm modules whose models have sslkd's ViT interface


def timm_name(name: str) -> str:
    """The timm model an alias stands for (any other name is a timm name already)."""
    return VITS.get(name) or CNNS.get(name) or name


def is_backbone(name: str) -> bool:
    """Whether ``name`` is an alias or a timm model name."""
    return name in VITS or name in CNNS or timm.is_model(name)


@dataclass
class ModelConfig:
    backbone: str = "vit_tiny"  # one of BACKBONES (sslkd info lists them)
    patch_size: Positive = 4  # ViTs: patch side in pixels
    drop_path_rate: Annotated[float, Range(ge=0, lt=1)] = 0.1  # stochastic depth of the student (the teacher has none)
    small_stem: bool = True  # CNNs: 3x3 stride-1 stem without max-pool, for small images
    depth: Positive | None = None  # ViT depth override (None: the architecture's own)
    init_seed: int | None = None  # weights and drop-path seed (None: `seed`, which seeds data and masks)
    pretrained: str | None = None  # start from: an sslkd run / checkpoint / export, a weight file, timm:<name>

    def validate(self, prefix: str = "model.") -> None:
        if not is_backbone(self.backbone):
            raise ConfigError(
                f"{prefix}backbone: not an alias ({', '.join(BACKBONES)}) nor a timm model name "
                f"(sslkd info --models PATTERN lists them) (got {self.backbone!r})"
            )


def matching_models(pattern: str) -> tuple[list[str], list[str]]:
    """(ViT-family names, other names) among the aliases and timm models containing ``pattern``."""
    names = sorted(set(timm.list_models(f"*{pattern}*")) | {a for a in BACKBONES if pattern in a})
    return [n for n in names if is_vit(n)], [n for n in names if not is_vit(n)]


def is_vit(name: str) -> bool:
    """Whether backbone ``name`` gets sslkd's ViT interface (patch tokens, a mask token, a patch size)."""
    return name in VITS or (name not in CNNS and timm.is_model(name) and is_model_in_modules(name, VIT_MODULES))


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
    """``pool``: what ``forward_features`` returns as the image's feature: ``cls`` (the CLS token
    after the final norm) or ``mean`` (the patch tokens after the final norm, averaged: MOKD's
    global average pooling); models without a class token always pool."""

    is_vit = True
    pool = "cls"

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
        tokens = x[:, self.num_prefix_tokens :]
        return (x[:, 0] if self.num_prefix_tokens and self.pool == "cls" else tokens.mean(1)), tokens

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
    """Any timm model through ``forward_features``: a feature map ``[B, C, h, w]`` (``[B, h, w, C]``
    for NHWC models such as Swin) or tokens ``[B, N, C]`` (``num_prefix_tokens`` of them CLS-like).
    ``cls`` is the first prefix token where there is one, else the mean of the positions."""

    is_vit = False

    def __init__(self, net: nn.Module, in_chans: int, img_size: int = 32) -> None:
        super().__init__()
        self.net = net
        self.channels_last = getattr(net, "output_fmt", "NCHW") == "NHWC"
        self.prefix = int(getattr(net, "num_prefix_tokens", 0))
        # what forward_features really returns (timm's EfficientNet adds its 1x1 conv head there)
        with torch.no_grad():
            was = net.training
            out = net.eval().forward_features(torch.zeros(1, in_chans, max(32, img_size), max(32, img_size)))
            net.train(was)
        if out.ndim not in (3, 4):
            raise ValueError(
                f"{type(net).__name__}.forward_features gives a {out.ndim}-d tensor; sslkd reads "
                f"feature maps [B, C, h, w] or tokens [B, N, C]"
            )
        self.embed_dim = out.shape[-1] if out.ndim == 3 or self.channels_last else out.shape[1]

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is not None:
            raise ValueError("a patch mask was passed to a CNN backbone; masked image modelling needs a ViT")
        out = self.net.forward_features(x)
        if out.ndim == 3:  # tokens
            tokens = out[:, self.prefix :]
            return (out[:, 0] if self.prefix else tokens.mean(1)), tokens
        tokens = out.flatten(1, 2) if self.channels_last else out.flatten(2).transpose(1, 2)
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
    """Build backbone ``name`` (an alias of :data:`BACKBONES` or a timm model name) with random weights."""
    arch = timm_name(name)
    if not timm.is_model(arch):
        raise ValueError(
            f"unknown backbone '{name}': not an alias ({', '.join(BACKBONES)}) nor a timm model name "
            f"(sslkd info --models PATTERN lists them)"
        )
    if is_vit(name):
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not divisible by patch size {patch_size}")
        extra = {"depth": depth} if depth else {}
        vit = timm.create_model(
            arch,
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
    net = _create(arch, in_chans, img_size, drop_path_rate, depth, **kwargs)
    if small_stem and not hasattr(net, "patch_embed"):  # a patch stem (EVA, Swin) keeps its stride
        apply_small_stem(net)
    return CNNBackbone(net, in_chans, img_size)


def _create(arch: str, in_chans: int, img_size: int, drop_path_rate: float, depth: int | None, **kwargs) -> nn.Module:
    """A timm model without classifier nor pooling; options a model does not take are dropped in
    turn (fixed-size and EVA models take ``img_size`` and ``depth``, most take ``drop_path_rate``;
    a CNN ignores ``depth``, as it always has)."""
    base = {"pretrained": False, "in_chans": in_chans, "num_classes": 0, "global_pool": "", **kwargs}
    sized = {"drop_path_rate": drop_path_rate, "img_size": img_size, **({"depth": depth} if depth else {})}
    for extra in (
        sized,
        {"drop_path_rate": drop_path_rate, "img_size": img_size},
        {"drop_path_rate": drop_path_rate},
        {},
    ):
        try:
            return timm.create_model(arch, **base, **extra)
        except TypeError:
            continue
    return timm.create_model(arch, **{k: v for k, v in base.items() if k != "global_pool"})


def apply_small_stem(net: nn.Module) -> None:
    """sslkd's small-image stem, in place: a ResNet's stem becomes a 3x3 stride-1 convolution
    without max-pool (the CIFAR variant); any other network's first convolution loses its stride
    (and a top-level max-pool goes). ``net.sslkd_small_stem`` records it (export reads it)."""
    if hasattr(net, "conv1") and hasattr(net, "maxpool"):
        old = net.conv1
        net.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    else:
        next(m for m in net.modules() if isinstance(m, nn.Conv2d)).stride = (1, 1)
        if isinstance(getattr(net, "maxpool", None), nn.MaxPool2d):
            net.maxpool = nn.Identity()
    net.sslkd_small_stem = True
