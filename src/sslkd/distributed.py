"""What sslkd needs from ``torch.distributed`` beyond DDP: batch-level gathers.

Relations over the batch (RKD at the CLS level) must see the global batch. ``gather_batch``
concatenates every process's rows in rank order. With ``differentiable=True`` it uses
``torch.distributed.nn.functional.all_gather``, whose backward sums the gradients of all ranks
into each rank's own slice: every rank computes the same loss over the global batch, so each
slice receives ``world_size`` times its gradient, and DDP's average over ranks restores exactly the
single-process gradient of the global-batch loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_batch(x: torch.Tensor, differentiable: bool = True) -> torch.Tensor:
    """``x [B, ...]`` of every process, concatenated along dim 0 in rank order (``[W*B, ...]``);
    ``x`` itself when not distributed. All processes must pass the same shape."""
    if not is_distributed():
        return x
    if differentiable and x.requires_grad:
        from torch.distributed.nn.functional import all_gather
        return torch.cat(all_gather(x.contiguous()), 0)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, 0)
