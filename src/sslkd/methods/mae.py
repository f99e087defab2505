"""MAE (He et al., CVPR 2022): a ViT encoder sees only the visible 25% of the patches (a random
subset per image); a light decoder gets the encoded tokens plus a shared mask token at every
masked position (with its own position embedding) and predicts the pixels of each patch. The loss
is the mean squared error on the masked patches only, against pixels normalised per patch
(``norm_pix_loss``, the paper's default; :class:`~sslkd.losses.MAELoss`).

Only the first global crop is used. The decoder's position embedding is learned here (the paper:
fixed 2-D sin-cos). Evaluation reads the encoder (without masking); there is no teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from timm.models.vision_transformer import Block
from torch import nn

from sslkd.errors import ConfigError
from sslkd.losses.mae import MAELoss, patchify
from sslkd.methods.base import Method, MethodContext, StepInfo
from sslkd.methods.registry import register
from sslkd.schema import Positive, Range


@dataclass
class MAEConfig:
    name: str = "mae"  # the method (sslkd info lists them)
    mask_ratio: Annotated[float, Range(gt=0, lt=1)] = 0.75  # share of the patches hidden from the encoder
    decoder_dim: Positive = 128  # decoder width
    decoder_depth: Positive = 2  # decoder blocks
    decoder_heads: Positive = 4  # decoder attention heads
    norm_pix_loss: bool = True  # targets normalised per patch (the paper's default)

    def validate(self) -> None:
        if self.decoder_dim % self.decoder_heads:
            raise ConfigError(
                f"method.decoder_dim={self.decoder_dim} is not divisible by method.decoder_heads={self.decoder_heads}"
            )


@register("mae")
class MAE(Method):
    config_class = MAEConfig
    needs_vit = "encodes the visible patches"
    local_crops = False

    def __init__(self, ctx: MethodContext, in_chans: int, img_size: int, eval_only: bool = False, **kwargs) -> None:
        super().__init__(ctx, in_chans, img_size, eval_only, **kwargs)
        m = ctx.method
        backbone = self.build_backbone()
        if backbone.num_prefix_tokens != 1:
            raise ValueError(
                f"MAE's decoder takes one class token; '{ctx.model.backbone}' has "
                f"{backbone.num_prefix_tokens} prefix tokens (registers, distillation token)"
            )
        p = backbone.patch_size
        n = (img_size // p) ** 2
        self.student = nn.Module()
        self.student.backbone = backbone
        self.decoder_embed = nn.Linear(backbone.embed_dim, m.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, m.decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, n + 1, m.decoder_dim))
        self.decoder = nn.Sequential(
            *[Block(m.decoder_dim, m.decoder_heads, qkv_bias=True) for _ in range(m.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(m.decoder_dim)
        self.decoder_pred = nn.Linear(m.decoder_dim, p * p * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        self.loss_fn = MAELoss(m.norm_pix_loss)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Encoder and decoder (the backbone's iBOT mask token is never used: no gradient)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def random_mask(self, b: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices of the kept patches [B, n_keep] in ascending order, mask [B, N] with 1 = masked)."""
        keep = int(round(n * (1 - self.ctx.method.mask_ratio)))
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
        loss = self.loss_fn(pred, patchify(x, p), mask)
        return {"loss": loss, "mae": loss.detach()}, {"mask_ratio": mask.mean()}

    def eval_backbone(self, which: str = "teacher", model: int = 1):
        self.check_model(model)
        return self.student.backbone
