"""Last-block CLS attention of a ViT, every head, as an image grid (DINO's / the paper's Figure 3)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sslkd.eval.features import normalize_batch  # noqa: E402
from sslkd.models import ViTBackbone  # noqa: E402


@torch.no_grad()
def cls_attention(
    backbone: ViTBackbone,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    threshold: float | None = None,
) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> ``[B, heads, H, W]`` CLS-to-patch attention, upsampled (nearest).

    With ``threshold`` (e.g. 0.6), each map becomes a 0/1 mask of the patches that hold that
    share of the attention mass (DINO's visualisation)."""
    if not isinstance(backbone, ViTBackbone):
        raise ValueError("attention maps need a ViT backbone")
    backbone.eval()
    x = normalize_batch(images, mean, std)
    attn = backbone.attention_maps(x)[:, :, 0, backbone.num_prefix_tokens :]  # [B, heads, N]
    b, heads, n = attn.shape
    p = backbone.patch_size
    h, w = x.shape[-2] // p, x.shape[-1] // p
    if threshold is not None:
        val, idx = attn.sort(dim=-1)
        val = val / val.sum(-1, keepdim=True)
        keep = val.cumsum(-1) > (1 - threshold)
        attn = torch.zeros_like(attn).scatter_(-1, idx, keep.float())
    maps = attn.reshape(b, heads, h, w)
    return F.interpolate(maps, scale_factor=p, mode="nearest")


def plot_attention(images: torch.Tensor, maps: torch.Tensor, out: str | Path, title: str = "") -> Path:
    """Grid: one row per image, the input then one column per head."""
    b, heads = maps.shape[:2]
    fig, axes = plt.subplots(b, heads + 1, figsize=(1.4 * (heads + 1), 1.4 * b), squeeze=False)
    for i in range(b):
        img = images[i].permute(1, 2, 0).cpu().numpy()
        axes[i, 0].imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        for hd in range(heads):
            axes[i, hd + 1].imshow(maps[i, hd].cpu().numpy(), cmap="inferno")
            if i == 0:
                axes[i, hd + 1].set_title(f"head {hd}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def images_from_files(paths: Sequence[str | Path], size: int, channels: int) -> torch.Tensor:
    """uint8 ``[N, C, size, size]`` of image files (resized to a square: attention maps of a whole
    picture); an unreadable file is a ``ValueError`` naming it."""
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BICUBIC)
                arrays.append(np.asarray(im, dtype=np.uint8).reshape(size, size, channels))
        except OSError as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
