"""Linear probe on frozen features.

Features are extracted once (no augmentation), standardised with the training set's statistics
(MAE's BatchNorm-without-affine, folded into the data), and a linear classifier is trained with
SGD (momentum 0.9, cosine learning rate, cross-entropy). This is the fast protocol; the
augmented protocol of DINO trains the same layer on random crops and gives slightly higher
numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkd.schedules import cosine_schedule


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Top-1/top-5 test accuracy (%) of a linear classifier trained on ``train_features``."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    mean = train_features.mean(0, keepdim=True)
    std = train_features.std(0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (train_features - mean) / std, (test_features - mean) / std
    g = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(xtr.shape[1], num_classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = max(1, (len(xtr) + batch_size - 1) // batch_size)
    lrs = cosine_schedule(lr, 0.0, epochs * steps_per_epoch)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch_size):
            idx = perm[i : i + batch_size]
            opt.param_groups[0]["lr"] = float(lrs[step])
            step += 1
            loss = F.cross_entropy(layer(xtr[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = layer(xte).topk(min(5, num_classes), dim=1).indices
    truth = test_labels.view(-1, 1)
    return {
        "top1": 100.0 * (pred[:, :1] == truth).float().mean().item(),
        "top5": 100.0 * (pred == truth).any(1).float().mean().item(),
    }
