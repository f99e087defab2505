"""The masked-relational-KD paper's Table 1: random init vs iBOT & KD vs iBOT & RKD-D vs iBOT &
RKD-A, each pretrained with the same budget and evaluated with a linear probe and weighted kNN
(Acc@1, Acc@5), with the curves (Figure 2) and attention maps (Figure 3) of the runs."""

from __future__ import annotations

from pathlib import Path

from sslkd.experiments.compare import run_comparison

DEFAULT_CONFIGS = ["configs/ibot/cifar10_vit_tiny_kd.yaml", "configs/ibot/cifar10_vit_tiny_rkd_d.yaml",
                   "configs/ibot/cifar10_vit_tiny_rkd_a.yaml"]


def run_table1(configs: list[str], out: str | Path, overrides: list[str] | None = None,
               eval_dataset: str | None = None, eval_root: str | None = None, linear_epochs: int = 100,
               progress: bool = True, **kwargs) -> list[dict]:
    """The paper's Table 1 (``table1.md``/``.csv``): a random-init row, then each config."""
    return run_comparison(configs, out, overrides, eval_dataset, eval_root, linear_epochs, random_init=True,
                          name="table1", progress=progress, **kwargs)
