"""The kNN monitor of a training run: the teacher's weighted kNN accuracy every
``eval.knn_every`` epochs and at the last, on the held-out split (loaded when first due; a dataset
without labels or without a held-out split is not monitored, rather than scored on fitting)."""

from __future__ import annotations

import torch

from sslkd.config import Config
from sslkd.data import NoHeldOutSplitError, held_out
from sslkd.eval import evaluate
from sslkd.train.inputs import data_kwargs


class KnnMonitor:
    def __init__(self, cfg: Config, train_set, test_set, device: torch.device) -> None:
        self.cfg, self.train_set, self.test_set, self.device = cfg, train_set, test_set, device
        self.possible = bool(train_set.num_classes)

    def due(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based, just finished) is monitored (the same on every process)."""
        e = self.cfg.eval
        if not (e.knn_every and (epoch % e.knn_every == 0 or epoch == self.cfg.train.epochs) and self.possible):
            return False
        if self.test_set is None:
            try:
                self.test_set = held_out(self.cfg.data.name, self.train_set, **data_kwargs(self.cfg))
            except NoHeldOutSplitError:
                self.possible = False
        return self.possible

    def __call__(self, backbone: torch.nn.Module) -> dict[str, float]:
        """``{"top1", "top5"}`` of ``backbone`` (every process embeds)."""
        e = self.cfg.eval
        res = evaluate(
            backbone,
            self.train_set,
            self.test_set,
            ("knn",),
            size=self.cfg.aug.global_crops_size,
            device=self.device,
            k=e.knn_k,
            temperature=e.knn_t,
            max_train=e.knn_max_train,
            num_workers=self.cfg.data.num_workers,
        )
        return {"top1": res["knn"]["top1"], "top5": res["knn"]["top5"]}
