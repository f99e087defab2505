"""MOKD's analyses, usable on any sslkd backbones: prediction consistency of two models (Table 9),
t-SNE of features (Fig. 4), mean attention distance per layer (Fig. 5; a receptive-field analogue
for CNNs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from sklearn.manifold import TSNE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend

from sslkd.eval.features import normalize_batch
from sslkd.eval.knn import knn_classify
from sslkd.models import Backbone, CNNBackbone, ViTBackbone


def prediction_consistency(
    train_a: torch.Tensor,
    test_a: torch.Tensor,
    train_b: torch.Tensor,
    test_b: torch.Tensor,
    train_labels: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """Share (%) of test images on which the kNN predictions of two models' features agree, with
    each model's own kNN top-1 and the share where both are right."""
    a = knn_classify(train_a, train_labels, test_a, test_labels, k, temperature, return_predictions=True)
    b = knn_classify(train_b, train_labels, test_b, test_labels, k, temperature, return_predictions=True)
    pa, pb, y = a["predictions"], b["predictions"], test_labels.cpu()
    return {
        "consistency": 100.0 * float((pa == pb).double().mean()),
        "top1_a": a["top1"],
        "top1_b": b["top1"],
        "both_right": 100.0 * float(((pa == y) & (pb == y)).double().mean()),
    }


def plot_tsne(
    features: torch.Tensor,
    labels: torch.Tensor,
    out: str | Path,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "",
    seed: int = 0,
    max_points: int = 2000,
) -> Path:
    """2-D t-SNE (scikit-learn) of ``features`` for the chosen ``classes`` (all by default), at
    most ``max_points`` evenly spaced samples, as a PNG."""
    labels = labels.cpu()
    n_classes = len(class_names) if class_names is not None else int(labels.max()) + 1
    bad = [c for c in classes or [] if not 0 <= c < n_classes]
    if bad:
        raise ValueError(f"--classes {' '.join(map(str, bad))}: the dataset has classes 0..{n_classes - 1}")
    keep = torch.ones_like(labels, dtype=torch.bool) if classes is None else torch.isin(labels, torch.tensor(classes))
    idx = keep.nonzero().flatten()
    if len(idx) > max_points:
        idx = idx[torch.linspace(0, len(idx) - 1, max_points).long()]
    x = torch.nn.functional.normalize(features[idx].float(), dim=1).numpy()
    emb = TSNE(2, init="pca", random_state=seed, perplexity=min(30, max(5, len(x) // 4))).fit_transform(x)
    y = labels[idx].numpy()
    fig, ax = plt.subplots(figsize=(6, 6))
    for c in np.unique(y):
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        ax.scatter(emb[y == c, 0], emb[y == c, 1], s=4, label=name)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title or "t-SNE of features")
    ax.legend(markerscale=3, fontsize=7, loc="best")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


@torch.no_grad()
def vit_attention_distance(backbone: ViTBackbone, images: torch.Tensor) -> np.ndarray:
    """Mean attention distance (pixels) ``[layers, heads]``: for every patch query, the distance to
    each patch key weighted by the attention it pays (CLS excluded), averaged over queries and images."""
    vit = backbone.vit
    p = backbone.patch_size
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    h, w = images.shape[-2] // p, images.shape[-1] // p
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float() * p
    dist = torch.cdist(pos, pos)  # [N, N]
    n0 = backbone.num_prefix_tokens
    rows = []
    for blk in vit.blocks:
        attn = blk.attn
        y = blk.norm1(x)
        b, n, d = y.shape
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)
        a = ((attn.q_norm(qkv[0]) * attn.scale) @ attn.k_norm(qkv[1]).transpose(-2, -1)).softmax(-1)
        a = a[:, :, n0:, n0:]
        a = a / a.sum(-1, keepdim=True)  # attention among patches only
        rows.append((a * dist).sum(-1).mean((0, 2)).numpy())
        x = blk(x)
    return np.stack(rows)


def cnn_receptive_distance(backbone: CNNBackbone, images: torch.Tensor) -> np.ndarray:
    """The CNN analogue ``[stages, 1]``: for each stage's output, the mean distance (pixels) from
    the centre unit's position to the input pixels, weighted by ``|d centre / d input|`` (the
    effective receptive field)."""
    net = backbone.net
    names = [f["module"] for f in net.feature_info] if hasattr(net, "feature_info") else []
    modules = dict(net.named_modules())
    stages = [modules[n] for n in names if n in modules]
    if not stages:
        raise ValueError("this CNN exposes no feature stages (timm feature_info)")
    h, w = images.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    out = []
    was = net.training
    net.eval()
    for stage in stages:
        x = images.clone().requires_grad_(True)
        seen = {}
        hook = stage.register_forward_hook(lambda mod, inp, o, seen=seen: seen.update(y=o))
        try:
            net.forward_features(x)
        finally:
            hook.remove()
        y = seen["y"]
        cy, cx = y.shape[-2] // 2, y.shape[-1] // 2
        y[:, :, cy, cx].sum().backward()
        g = x.grad.abs().sum((0, 1))
        g = g / g.sum().clamp_min(1e-12)
        ccy, ccx = (cy + 0.5) * h / y.shape[-2], (cx + 0.5) * w / y.shape[-1]
        out.append([float((g * ((yy + 0.5 - ccy) ** 2 + (xx + 0.5 - ccx) ** 2).sqrt()).sum())])
    net.train(was)
    return np.array(out)


def attention_distance(
    backbone: Backbone, images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Per layer (ViT: per head) mean attention / receptive distance in pixels, see above."""
    x = normalize_batch(images, mean, std)
    if isinstance(backbone, ViTBackbone):
        return vit_attention_distance(backbone.eval(), x)
    return cnn_receptive_distance(backbone, x)


def plot_attention_distance(curves: dict[str, np.ndarray], out: str | Path, title: str = "") -> Path:
    """One panel: for each labelled model, every head's distance per layer (dots) and the mean (line)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, d) in enumerate(curves.items()):
        layers = np.arange(1, len(d) + 1)
        color = f"C{i}"
        for head in range(d.shape[1]):
            ax.scatter(layers, d[:, head], s=8, color=color, alpha=0.5)
        ax.plot(layers, d.mean(1), color=color, label=label)
    ax.set_xlabel("layer (CNN: stage)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_title(title or "Mean attention distance per layer")
    ax.legend(fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
