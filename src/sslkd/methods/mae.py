"""MAE (He et al., CVPR 2022): a ViT encoder sees only the visible 25% of the patches (a random
subset per image); a light decoder gets the encoded tokens plus a shared mask token at every
masked position (with its own position embedding) and predicts the pixels of each patch. The loss
is the mean squared error on the masked patches only, against pixels normalised per patch
(``norm_pix_loss``, the paper's default):

.. math::
    L = \\frac{1}{\\sum_{b,n} M_{bn}} \\sum_{b,n} M_{bn} \\frac{1}{P^2 C} \\|\\hat x_{bn} - \\tilde x_{bn}\\|^2,
    \\qquad \\tilde x_{bn} = (x_{bn} - \\mu_{bn}) / \\sqrt{\\sigma^2_{bn} + 10^{-6}}

Only the first global crop is used. The decoder's position embedding is learned here (the paper:
fixed 2-D sin-cos). Evaluation reads the encoder (without masking); there is no teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block
from torch import nn

from sslkd.methods.base import Method, StepInfo
from sslkd.models import ViTBackbone


@dataclass
class MAEConfig:
    name: str = "mae"
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True

    def validate(self) -> None:
        from sslkd.config import ConfigError
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"method.mask_ratio: must be in (0, 1) (got {self.mask_ratio})")
        for key in ("decoder_dim", "decoder_depth", "decoder_heads"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"method.{key}: must be positive (got {getattr(self, key)})")
        if self.decoder_dim % self.decoder_heads:
            raise ConfigError(f"method.decoder_dim={self.decoder_dim} is not divisible by "
                              f"method.decoder_heads={self.decoder_heads}")


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, N, p*p*C]`` (row-major patches, pixels in (p, p, C) order)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean over masked patches (``mask [B, N]``, 1 = masked) of the per-patch MSE, float32."""
    pred, target = pred.float(), target.float()
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(-1)
    m = mask.float()
    return (per_patch * m).sum() / m.sum().clamp_min(1)


class MAE(Method):
    config_class = MAEConfig

    def __init__(self, cfg, in_chans: int, img_size: int, eval_only: bool = False) -> None:
        super().__init__(cfg, in_chans, img_size, eval_only)
        m = cfg.method
        backbone = self.build_backbone()
        if not isinstance(backbone, ViTBackbone):
            raise ValueError(f"MAE encodes visible patches and needs a ViT backbone, got '{cfg.model.backbone}'")
        p = backbone.patch_size
        n = (img_size // p) ** 2
        self.student = nn.Module()
        self.student.backbone = backbone
        self.decoder_embed = nn.Linear(backbone.embed_dim, m.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, m.decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, n + 1, m.decoder_dim))
        self.decoder = nn.Sequential(*[Block(m.decoder_dim, m.decoder_heads, qkv_bias=True)
                                       for _ in range(m.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(m.decoder_dim)
        self.decoder_pred = nn.Linear(m.decoder_dim, p * p * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Encoder and decoder (the backbone's iBOT mask token is never used: no gradient)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def random_mask(self, b: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices of the kept patches [B, n_keep] in ascending order, mask [B, N] with 1 = masked)."""
        keep = int(round(n * (1 - self.cfg.method.mask_ratio)))
        ids = torch.rand(b, n, device=device).argsort(1)[:, :keep].sort(1).values
        mask = torch.ones(b, n, device=device)
        mask.scatter_(1, ids, 0.0)
        return ids, mask

    def forward(self, views, info: StepInfo):
        x = views[0]
        p = self.student.backbone.patch_size
        n = (x.shape[-2] // p) * (x.shape[-1] // p)
        ids, mask = self.random_mask(len(x), n, x.device)
        latent = self.decoder_embed(self.student.backbone.forward_visible(x, ids))  # [B, 1 + keep, Dd]
        full = self.mask_token.to(latent.dtype).expand(len(x), n, -1).clone()
        full.scatter_(1, ids[..., None].expand(-1, -1, full.shape[-1]), latent[:, 1:])
        y = self.decoder(torch.cat([latent[:, :1], full], 1) + self.decoder_pos.to(latent.dtype))
        pred = self.decoder_pred(self.decoder_norm(y))[:, 1:]
        loss = mae_loss(pred, patchify(x, p), mask, self.cfg.method.norm_pix_loss)
        return {"loss": loss, "mae": loss.detach()}, {"mask_ratio": mask.mean()}

    def eval_backbone(self, which: str = "teacher", model: int = 1):
        if model != 1:
            raise ValueError(f"MAE trains one model; --model {model} does not exist")
        return self.student.backbone
