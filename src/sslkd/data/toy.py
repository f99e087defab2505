"""Datasets that need no download: scikit-learn's 8x8 digits and procedural synthetic images."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits as sk_digits

from sslkd.data.base import ImageArrayDataset, resize_images


def load_digits(split: str, img_size: int | None = 16, test_fraction: float = 0.2) -> ImageArrayDataset:
    """scikit-learn's 1,797 8x8 digits (0..16 grey levels) as uint8, split 80/20 stratified with a
    fixed seed, upsampled to ``img_size`` (16 by default: 4x4 patches of 4 pixels for a ViT)."""
    d = sk_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test[rng.choice(idx, size=int(round(len(idx) * test_fraction)), replace=False)] = True
    keep = test if split == "test" else ~test
    images = resize_images(images[keep], img_size) if img_size else images[keep]
    return ImageArrayDataset(
        np.ascontiguousarray(images),
        labels[keep],
        [str(i) for i in range(10)],
        name="digits",
        mean=(0.2139,),
        std=(0.3298,),
    )


def make_synthetic(
    split: str,
    num_samples: int | None = None,
    num_classes: int = 10,
    img_size: int = 32,
    channels: int = 3,
    seed: int = 0,
) -> ImageArrayDataset:
    """Labelled procedural images: each class is an oriented grating with its own orientation,
    frequency and colour; samples vary in phase, frequency, contrast, position and noise, so a
    network must learn invariances to separate them beyond what raw pixels give."""
    n = num_samples or (1000 if split == "train" else 200)
    rng = np.random.default_rng(seed * 2 + (split == "test"))
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    crng = np.random.default_rng(12345 + num_classes)  # class looks are fixed across splits
    theta = np.pi * np.arange(num_classes) / num_classes + crng.uniform(0, 0.2, num_classes)
    freq = crng.uniform(1.5, 4.0, num_classes)
    colour = crng.uniform(0.3, 1.0, (num_classes, channels))
    yy, xx = np.mgrid[0:img_size, 0:img_size] / img_size
    images = np.empty((n, img_size, img_size, channels), dtype=np.uint8)
    for i, c in enumerate(labels):
        f = freq[c] * rng.uniform(0.85, 1.15)
        t = theta[c] + rng.normal(0, 0.05)
        wave = np.sin(2 * np.pi * f * (xx * np.cos(t) + yy * np.sin(t)) + rng.uniform(0, 2 * np.pi))
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.15, 0.4) ** 2))
        img = 0.5 + 0.5 * rng.uniform(0.5, 1.0) * wave * blob
        img = img[..., None] * colour[c] + rng.normal(0, 0.08, (img_size, img_size, channels))
        images[i] = (img.clip(0, 1) * 255).round().astype(np.uint8)
    return ImageArrayDataset(
        images, labels.astype(np.int64), [f"class{c}" for c in range(num_classes)], name="synthetic"
    )
