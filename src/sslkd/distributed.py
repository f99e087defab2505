"""What sslkd needs from ``torch.distributed`` beyond DDP: joining torchrun's process group,
batch-level gathers, and decisions every process must share.

Relations over the batch (RKD at the CLS level) must see the global batch. ``gather_batch``
concatenates every process's rows in rank order. With ``differentiable=True`` its backward sums
the gradients of all ranks into each rank's own slice (as
``torch.distributed.nn.functional.all_gather``): every rank computes the same loss over the
global batch, so each slice receives ``world_size`` times its gradient, and DDP's average over
ranks restores exactly the single-process gradient of the global-batch loss.
"""

from __future__ import annotations

import datetime
import os

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
        return _GatherWithGrad.apply(x)
    return _all_gather(x.detach())


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient and returns this rank's slice (what
    ``torch.distributed.nn.functional.all_gather`` does; that one is deprecated in torch 2.14)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        grad = grad.contiguous()
        dist.all_reduce(grad)
        b = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * b : (dist.get_rank() + 1) * b]


def shutdown() -> None:
    """Leave torchrun's process group (the end of a distributed command)."""
    if is_distributed():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device: str = "auto") -> tuple[int, int, int]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT`` or a rendezvous endpoint); NCCL on GPUs, gloo on CPUs. Returns
    ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` outside torchrun. Idempotent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda:
            torch.cuda.set_device(local)
        # a long timeout: rank 0 evaluates kNN / writes checkpoints while the others wait
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=60))
    return rank(), world_size(), local


def all_reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean over processes of each scalar in ``values`` (one collective for all of them)."""
    if not is_distributed() or not values:
        return values
    keys = list(values)
    flat = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return dict(zip(keys, flat.unbind()))


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every process if ``flag`` is true on any (a stop decision all ranks must share)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_main_process(value):
    """Rank 0's ``value`` (a small picklable object, e.g. a path) on every process: a choice that
    reads the file system (which checkpoint to resume) is made once, since another process may
    list the folder a moment earlier and see less."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
