"""Two CPU processes (gloo) launched by the test."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslkd.distributed import gather_batch
from sslkd.losses import FeatureQueue, RKDAngleLoss, RKDDistanceLoss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, student, teacher, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        b = len(student) // world
        s = student[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        t = teacher[rank * b:(rank + 1) * b]
        loss = sum(fn(gather_batch(s), gather_batch(t, differentiable=False))
                   for fn in (RKDDistanceLoss(), RKDAngleLoss()))
        loss.backward()
        q = FeatureQueue(6, student.shape[1])
        q.enqueue(t)
        out[rank] = {"loss": loss.detach(), "grad": s.grad / world, "queue": q.queue.clone()}  # / world: DDP's mean
    finally:
        dist.destroy_process_group()


def test_rkd_over_global_batch_matches_one_process():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), student, teacher, out), nprocs=2, join=True)
    s = student.clone().requires_grad_(True)
    ref = RKDDistanceLoss()(s, teacher) + RKDAngleLoss()(s, teacher)
    ref.backward()
    for rank in range(2):
        torch.testing.assert_close(out[rank]["loss"], ref.detach())
        torch.testing.assert_close(out[rank]["grad"], s.grad[rank * 4:(rank + 1) * 4])
        # the queue took both ranks' batches in rank order, keeping the newest 6 rows
        torch.testing.assert_close(out[rank]["queue"], torch.nn.functional.normalize(teacher, dim=-1)[-6:])


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_batch(x) is x
