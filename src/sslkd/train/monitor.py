"""The evaluation monitor of a training run: the teacher's accuracy by each protocol of
``eval.protocols`` (weighted kNN by default) every ``eval.knn_every`` epochs and at the last, on
the held-out split (loaded when first due; a dataset without labels or without a held-out split is
not monitored, rather than scored on fitting). Unlabelled images (label -1, a table's rows without
a class) are left out of the scoring, as every evaluation does."""

from __future__ import annotations

import warnings

import torch

from sslkd.config import Config, ConfigError
from sslkd.data import DatasetError, NoHeldOutSplitError, held_out, labelled
from sslkd.eval import evaluate, get_protocol, options_of
from sslkd.train.inputs import data_kwargs


class Monitor:
    def __init__(self, cfg: Config, train_set, test_set, device: torch.device) -> None:
        self.cfg, self.train_set, self.test_set, self.device = cfg, train_set, test_set, device
        self.possible = bool(train_set.num_classes)
        self.scored: tuple | None = None  # (train, test) without unlabelled images, once first due
        e = cfg.eval
        given = {"knn": {"k": [e.knn_k], "temperature": e.knn_t}}
        self.protocols = {name: options_of(name, given.get(name)) for name in e.protocols}  # unknown: named
        trained = [name for name in e.protocols if not get_protocol(name).frozen]
        if trained:
            raise ConfigError(
                f"eval.protocols: {', '.join(trained)} trains the backbone; the monitor scores frozen features"
            )

    def due(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based, just finished) is monitored (the same on every process)."""
        e = self.cfg.eval
        if not (e.knn_every and (epoch % e.knn_every == 0 or epoch == self.cfg.train.epochs) and self.possible):
            return False
        if self.scored is None:
            try:
                test = self.test_set
                if test is None:
                    test = held_out(self.cfg.data.name, self.train_set, **data_kwargs(self.cfg))
            except NoHeldOutSplitError:
                self.possible = False
                return False
            try:
                self.scored = labelled(self.train_set), labelled(test)
            except DatasetError as e:  # a split without one labelled image
                warnings.warn(f"evaluation monitor off: {e}", stacklevel=2)
                self.possible = False
        return self.possible and bool(self.protocols)

    def __call__(self, backbone: torch.nn.Module) -> dict[str, float]:
        """``{"<protocol>_top1", "<protocol>_top5"}`` of ``backbone`` (every process embeds)."""
        e = self.cfg.eval
        res = evaluate(
            backbone, *self.scored, self.protocols, size=self.cfg.aug.global_crops_size,
            device=self.device, max_train=e.knn_max_train, num_workers=self.cfg.data.num_workers, seed=self.cfg.seed,
        )  # fmt: skip
        return {f"{name}_{m}": res[name][m] for name in self.protocols for m in ("top1", "top5")}
