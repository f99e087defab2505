"""Exact gradient accumulation for losses over the whole batch (gradient caching, Gao et al. 2021).

A loss whose value couples the images of a batch (iBOT's CLS-level RKD: relations between every
pair of images) changes when the batch is cut into micro-batches: accumulation over 2 x B/2 is
then not B. Gradient caching makes it exact at the price of one extra forward pass per step:

1. without gradients, run every micro-batch and keep the features entering the batch-level
   losses (:meth:`Method.batch_features`), recording the random state before each micro-batch;
2. compute those losses on the concatenated features (:meth:`Method.batch_losses`, which gathers
   over processes as usual) and their gradients with respect to the features;
3. the engine then runs each micro-batch again with gradients, replaying its random state (drop
   path draws the same), and the method back-propagates ``<features, cached gradient>`` in place
   of the batch-level loss: by the chain rule the parameters get the whole batch's gradient.

Pass 1 must leave no trace: buffers (BatchNorm running statistics, pending centre statistics)
are restored afterwards, so EMA teacher and centres still step once per optimiser step.
"""

from __future__ import annotations

import torch

from sslkd.methods import Method, StepInfo


def rng_state(device: torch.device) -> tuple:
    """The random state drop path and dropout draw from on ``device`` (and the CPU's)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def cache_batch_gradients(
    method: Method, micro_batches: list[list[torch.Tensor]], info: StepInfo, device: torch.device, autocast
) -> list[dict] | None:
    """Passes 1 and 2 above. Returns one ``{"grads", "features", "losses", "rng"}`` per micro-batch
    (``grads``/``features``: that micro-batch's slices, ``losses``: the batch-level loss values),
    or ``None`` when the method has no batch-level loss this step."""
    saved = [b.detach().clone() for b in method.buffers()]
    feats, states = [], []
    with torch.no_grad():
        for micro, views in enumerate(micro_batches):
            info.micro = micro
            states.append(rng_state(device))
            with autocast():
                f = method.batch_features([v.to(device, non_blocking=True) for v in views], info)
            if f is None:
                break
            feats.append(f)
        for b, s in zip(method.buffers(), saved):
            b.copy_(s)
    if len(feats) < len(micro_batches):
        set_rng_state(states[0], device)
        return None
    sizes = [len(next(iter(f.values()))) for f in feats]
    whole = {k: torch.cat([f[k] for f in feats]).float().requires_grad_(True) for k in feats[0]}
    with torch.enable_grad():
        losses = method.batch_losses(whole, info)
        total = sum(losses.values())
        keys = list(whole)
        grads = torch.autograd.grad(total, [whole[k] for k in keys], allow_unused=True)
    grads = {k: g for k, g in zip(keys, grads) if g is not None}
    out, start = [], 0
    for f, n, state in zip(feats, sizes, states):
        out.append(
            {
                "grads": {k: g[start : start + n] for k, g in grads.items()},
                "features": f,
                "losses": {k: v.detach() for k, v in losses.items()},
                "rng": state,
            }
        )
        start += n
    return out
