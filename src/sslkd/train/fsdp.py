"""Fully sharded data parallelism (``train.parallel: fsdp``) with PyTorch's FSDP2 (``fully_shard``).

Each process keeps 1/world of every parameter, gradient and optimiser state; a unit's full
parameters exist only while it runs. Units, innermost first:

- every transformer block (timm's ``Block``: ViT backbones, MOKD's T-Head) — the memory win;
- every backbone, so that kNN feature extraction can call one on its own between steps;
- the method itself: heads, mask tokens, frozen teachers' leftovers — everything else, gathered
  for the whole of the method's forward (methods call their heads' helpers directly).

Student and EMA teacher are sharded alike (same shapes, ``Shard(0)`` on the same mesh), so the EMA
update, per-tensor clipping and AdamW run on the local shards without communication.

Checkpoints stay those of a one-process run (full tensors, the same keys): a sharded run can be
resumed on one process or with DDP and the other way round. Saving and loading are collective.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor

from sslkd.models import Backbone


def shard_method(method: nn.Module) -> nn.Module:
    """Shard ``method`` in place over the default process group; returns it."""
    backbones = [m for m in method.modules() if isinstance(m, Backbone)]
    for m in list(method.modules()):
        if isinstance(m, Block):
            fully_shard(m)
    for m in backbones:
        fully_shard(m)
        for name in ("forward_features", "forward_visible"):  # what methods call, besides forward
            if hasattr(m, name):
                register_fsdp_forward_method(m, name)
    fully_shard(method)
    register_fsdp_forward_method(method, "batch_features")  # gradient caching's pass 1 (accumulation)
    return method


def set_gradient_sync(module: nn.Module, sync: bool) -> None:
    """Reduce-scatter gradients on this backward (the last micro-batch) or keep accumulating the
    unsharded ones locally (the others): gradient accumulation without a collective per micro-batch."""
    if isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(sync)


def _full(value: Any) -> Any:
    if isinstance(value, DTensor):
        return value.full_tensor()
    if isinstance(value, dict):
        return {k: _full(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_full(v) for v in value]
    return value


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every sharded tensor gathered (collective: all ranks call it)."""
    return {k: _full(v) for k, v in module.state_dict().items()}


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """The optimiser's state dict with sharded moments gathered (collective)."""
    return _full(opt.state_dict())


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full tensors into a sharded module: each is cut into this process's shard."""
    current = module.state_dict()
    sharded = {}
    for k, v in state.items():
        cur = current.get(k)
        sharded[k] = (
            distribute_tensor(v.to(cur.dtype), cur.device_mesh, cur.placements) if isinstance(cur, DTensor) else v
        )
    module.load_state_dict(sharded)


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a full optimiser state into an optimiser over sharded parameters (moments shaped like
    their parameter are sharded like it; scalars such as ``step`` stay as they are)."""
    opt.load_state_dict(state)
    for group in opt.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                continue
            st = opt.state.get(p, {})
            for k, v in list(st.items()):
                if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.shape == p.shape:
                    st[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
