"""Patch masks for masked image modelling: BEiT/iBOT block-wise masking, or random masking.

Each image draws its own ratio: 0 with probability ``1 - mask_prob``, else uniform in
``ratio_range``. Block-wise masking places rectangles of at least ``min_block`` patches with a
log-uniform aspect ratio in ``[min_aspect, 1/min_aspect]`` until the image's target count is
reached (BEiT's generator). Draws come from an explicit ``torch.Generator`` so that masks are a
function of the seed and the step (resumable, independent of other random draws).
"""

from __future__ import annotations

import math

import torch


class MaskGenerator:
    """``__call__(n, h, w, generator) -> bool [n, h, w]`` (True = masked)."""

    def __init__(self, ratio_range: tuple[float, float] = (0.1, 0.5), mask_prob: float = 0.5,
                 mode: str = "block", min_aspect: float = 0.3, min_block: int = 4) -> None:
        lo, hi = ratio_range
        if not 0 <= lo <= hi < 1:
            raise ValueError(f"mask ratio range must satisfy 0 <= low <= high < 1, got {ratio_range}")
        if mode not in ("block", "random"):
            raise ValueError(f"mask mode must be 'block' or 'random', got '{mode}'")
        self.ratio_range, self.mask_prob, self.mode = (lo, hi), mask_prob, mode
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.min_block = min_block

    def ratios(self, n: int, generator: torch.Generator) -> torch.Tensor:
        lo, hi = self.ratio_range
        r = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.where(torch.rand(n, generator=generator, dtype=torch.float64) < self.mask_prob, r, 0.0)

    def __call__(self, n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        for i, ratio in enumerate(self.ratios(n, generator).tolist()):
            target = int(round(ratio * h * w))
            if target == 0:
                continue
            if self.mode == "random":
                idx = torch.randperm(h * w, generator=generator)[:target]
                masks[i].view(-1)[idx] = True
            else:
                self._blocks(masks[i], target, generator)
        return masks

    def _blocks(self, mask: torch.Tensor, target: int, g: torch.Generator) -> None:
        h, w = mask.shape
        count = 0
        while count < target:
            budget = target - count
            added = 0
            for _ in range(10):
                lo = min(self.min_block, budget)
                area = lo + (budget - lo) * torch.rand(1, generator=g).item()
                aspect = math.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0])
                                  * torch.rand(1, generator=g).item())
                bh = int(round(math.sqrt(area * aspect)))
                bw = int(round(math.sqrt(area / aspect)))
                if bh < 1 or bw < 1 or bh >= h or bw >= w:
                    continue
                top = int(torch.randint(0, h - bh + 1, (1,), generator=g))
                left = int(torch.randint(0, w - bw + 1, (1,), generator=g))
                block = mask[top:top + bh, left:left + bw]
                new = int((~block).sum())
                if 0 < new <= budget:
                    block.fill_(True)
                    added = new
                    break
            if added == 0:  # nothing fits any more (tiny grids): top up at random positions
                free = (~mask).view(-1).nonzero().squeeze(1)
                pick = free[torch.randperm(len(free), generator=g)[:budget]]
                mask.view(-1)[pick] = True
                return
            count += added
