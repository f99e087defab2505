"""Projection heads: DINO/iBOT's (weight-normalised prototypes), MoCo v3's and SEED's MLPs, MOKD's
transformer head (T-Head)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn


class WeightNormLinear(nn.Module):
    """Bias-free ``y = x (g * v / ||v||)^T`` with rows of ``v`` normalised; ``g`` frozen at 1 when
    ``fixed_norm`` (DINO's ``norm_last_layer=True``)."""

    def __init__(self, in_dim: int, out_dim: int, fixed_norm: bool = True) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fixed_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """DINO/iBOT projection head: ``nlayers``-layer MLP (GELU) to a bottleneck, L2-normalise, then a
    weight-normalised linear layer to ``out_dim`` prototypes. ``forward(x [B, in_dim]) -> [B, out_dim]``
    (any leading dims)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (nlayers - 1)
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if use_bn else []) + [nn.GELU()]
        layers.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fixed_norm=norm_last_layer)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised MLP output ``[..., bottleneck_dim]`` (before the prototypes)."""
        shape = x.shape[:-1]
        z = F.normalize(self.mlp(x.reshape(-1, x.shape[-1])), dim=-1, eps=1e-6)
        return z.reshape(*shape, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck(x))


class IBOTHead(DINOHead):
    """DINO head whose MLP is shared by the CLS and the patch tokens; the patch tokens get their
    own weight-normalised last layer when ``shared_head`` is False or ``patch_out_dim`` differs
    (iBOT's ``last_layer2``)."""

    def __init__(
        self, in_dim: int, out_dim: int = 8192, patch_out_dim: int | None = None, shared_head: bool = True, **kwargs
    ) -> None:
        super().__init__(in_dim, out_dim, **kwargs)
        patch_out_dim = patch_out_dim or out_dim
        self.patch_last_layer = None
        # True: project patch tokens with last_layer anyway (iBOT's teacher: shared_head_teacher); the
        # patch layer stays a parameter so that student and EMA teacher keep the same layout
        self.patches_use_cls_layer = False
        if not shared_head or patch_out_dim != out_dim:
            bottleneck = self.last_layer.weight_v.shape[1]
            self.patch_last_layer = WeightNormLinear(
                bottleneck, patch_out_dim, fixed_norm=not self.last_layer.weight_g.requires_grad
            )

    def project_patches(self, z: torch.Tensor) -> torch.Tensor:
        if self.patches_use_cls_layer or self.patch_last_layer is None:
            return self.last_layer(z)
        return self.patch_last_layer(z)


def moco_mlp(in_dim: int, hidden: int, out: int, layers: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo v3's MLP: (Linear - BN - ReLU) x (layers - 1), Linear, then a BN without affine
    (projector; the predictor has none)."""
    mods: list[nn.Module] = []
    dims = [in_dim] + [hidden] * (layers - 1)
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    mods += [nn.Linear(dims[-1], out, bias=False)] + ([nn.BatchNorm1d(out, affine=False)] if last_bn else [])
    return nn.Sequential(*mods)


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, use_bn: bool = True) -> nn.Sequential:
    """SEED's / MoCo v2's student head: Linear - ReLU - Linear (``use_bn``: a BatchNorm after the
    first Linear, not in SEED's code)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim) if use_bn else nn.Identity(),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class THead(nn.Module):
    """``forward(tokens [B, N, C_in], search [B, C_search] | None) -> [B, out_dim]``.

    Tokens (ViT patch tokens, or a CNN's flattened feature map) are projected to ``width`` (a
    1x1 convolution on a feature map is this per-token linear layer), get learned position
    embeddings and pass ``depth`` transformer blocks (ViT-S blocks in the paper: width 384, 6
    heads). ``search``, another model's pooled feature, is projected to ``width`` and prepended as
    one extra token: self-attention lets the tokens pick what is consistent with it; the extra
    token is dropped before the mean pooling, so it shapes the output only through attention."""

    def __init__(
        self,
        in_dim: int,
        num_tokens: int,
        out_dim: int,
        width: int = 384,
        depth: int = 3,
        search_dim: int | None = None,
        num_heads: int | None = None,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, width) if in_dim != width else nn.Identity()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.search_proj = nn.Linear(search_dim or width, width)
        self.blocks = nn.Sequential(
            *[Block(width, num_heads or max(1, width // 64), mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, out_dim)

    def forward(self, tokens: torch.Tensor, search: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj(tokens) + self.pos_embed
        if search is not None:
            x = torch.cat([self.search_proj(search)[:, None], x], 1)
        x = self.blocks(x)
        if search is not None:
            x = x[:, 1:]  # the search token is not pooled
        return self.fc(self.norm(x.mean(1)))


class MoCoHead(nn.Sequential):
    """MoCo v2's projection MLP ``fc``: Linear, ReLU, Linear (MoCo v1's: one Linear)."""

    def __init__(self, weights: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        layers: list[nn.Module] = []
        for i, (w, b) in enumerate(weights):
            layers += [nn.ReLU()] if i else []
            layers.append(nn.Linear(w.shape[1], w.shape[0]))
            layers[-1].weight.data.copy_(w)
            layers[-1].bias.data.copy_(b)
        super().__init__(*layers)
        self.widths = [weights[0][0].shape[1]] + [w.shape[0] for w, _ in weights]
