"""MOKD's Transformer head (T-Head): a few transformer blocks over a backbone's tokens, mean
pooling and a final FC, with an optional extra "search" token (cross-attention feature search)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn


class THead(nn.Module):
    """``forward(tokens [B, N, C_in], search [B, C_search] | None) -> [B, out_dim]``.

    Tokens (ViT patch tokens, or a CNN's flattened feature map) are projected to ``width`` (a
    1x1 convolution on a feature map is this per-token linear layer), get learned position
    embeddings and pass ``depth`` transformer blocks (ViT-S blocks in the paper: width 384, 6
    heads). ``search``, another model's pooled feature, is projected to ``width`` and prepended as
    one extra token: self-attention lets the tokens pick what is consistent with it; the extra
    token is dropped before the mean pooling, so it shapes the output only through attention."""

    def __init__(self, in_dim: int, num_tokens: int, out_dim: int, width: int = 384, depth: int = 3,
                 search_dim: int | None = None, num_heads: int | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, width) if in_dim != width else nn.Identity()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.search_proj = nn.Linear(search_dim or width, width)
        self.blocks = nn.Sequential(*[Block(width, num_heads or max(1, width // 64), mlp_ratio=4.0, qkv_bias=True)
                                      for _ in range(depth)])
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
