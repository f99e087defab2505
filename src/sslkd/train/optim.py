"""Optimisers from a method's specs: AdamW or SGD, decayed and undecayed groups, learning rates
that follow the engine's schedule shape at each optimiser's own height."""

from __future__ import annotations

import torch
import torch._dynamo

from sslkd.models import Backbone, DINOHead, THead, ViTBackbone, WeightNormLinear


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
        groups = [
            {"params": decay, "lr_scale": scale, "wd_schedule": wd is None, "weight_decay": wd or 0.0},
            {"params": no_decay, "lr_scale": scale, "wd_schedule": False, "weight_decay": 0.0},
        ]
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


@torch.no_grad()
def clip_per_tensor(params: list[torch.Tensor], max_norm: float) -> None:
    """Each gradient rescaled to norm at most ``max_norm`` on its own (iBOT/DINO's ``clip_gradients``:
    ``g <- g * min(1, max_norm / (||g|| + 1e-6))``), in a few fused foreach kernels instead of one
    ``clip_grad_norm_`` call per tensor."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = torch._foreach_add(norms, 1e-6)
    torch._foreach_reciprocal_(scales)
    torch._foreach_mul_(scales, max_norm)
    torch._foreach_clamp_max_(scales, 1.0)
    torch._foreach_mul_(grads, scales)


def compile_networks(method: torch.nn.Module) -> None:
    """``torch.compile`` the heavy parts of every backbone and head of ``method`` in place
    (parameter names and checkpoints unchanged): ViT blocks, CNN feature extractors, head MLPs and
    last layers, T-Head blocks. Masking, the losses and the EMA stay eager."""
    # each ViT block has its own drop-path rate, a constant to dynamo: one graph per block (12+)
    key = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), 64))
    for m in list(method.modules()):
        if isinstance(m, ViTBackbone):
            m.vit.blocks.compile()
        elif isinstance(m, Backbone) and hasattr(m, "net"):
            m.net.forward_features = torch.compile(m.net.forward_features)  # called directly, not via __call__
        elif isinstance(m, DINOHead):
            m.mlp.compile()
        elif isinstance(m, WeightNormLinear):
            m.compile()
        elif isinstance(m, THead):
            m.blocks.compile()
