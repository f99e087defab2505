"""Optimisers from a method's specs: AdamW or SGD, decayed and undecayed groups, learning rates
that follow the engine's schedule shape at each optimiser's own height."""

from __future__ import annotations

import torch


def build_optimizers(specs: list[dict], base_lr: float, fused: bool = False) -> list[torch.optim.Optimizer]:
    """One optimiser per spec (``{"params": [(name, p)], "kind": "adamw"|"sgd", "lr", "weight_decay",
    "momentum"}``, see :meth:`sslkd.methods.Method.optimizer_specs`), each with a decayed group
    (matrices) and an undecayed one (biases, norms, weight-norm gains)."""
    opts: list[torch.optim.Optimizer] = []
    for spec in specs:
        named = spec["params"]
        decay = [p for n, p in named if p.ndim > 1 and not n.endswith("weight_g")]
        no_decay = [p for n, p in named if not (p.ndim > 1 and not n.endswith("weight_g"))]
        scale = (spec.get("lr") or base_lr) / base_lr  # the schedule's shape, this optimiser's height
        wd = spec.get("weight_decay")  # None: the cosine weight-decay schedule
        groups = [{"params": decay, "lr_scale": scale, "wd_schedule": wd is None, "weight_decay": wd or 0.0},
                  {"params": no_decay, "lr_scale": scale, "wd_schedule": False, "weight_decay": 0.0}]
        if spec.get("kind", "adamw") == "sgd":
            opts.append(torch.optim.SGD(groups, lr=0.0, momentum=spec.get("momentum", 0.9)))
        else:
            opts.append(torch.optim.AdamW(groups, lr=0.0, fused=fused))
    return opts


def set_hparams(optimizers: list[torch.optim.Optimizer], lr: float, wd: float) -> None:
    """This step's learning rate (times each group's ``lr_scale``) and scheduled weight decay.
    Groups from checkpoints written before ``lr_scale`` existed: scale 1, the first group decayed."""
    for opt in optimizers:
        for i, group in enumerate(opt.param_groups):
            group["lr"] = lr * group.get("lr_scale", 1.0)
            if group.get("wd_schedule", i == 0):
                group["weight_decay"] = wd
