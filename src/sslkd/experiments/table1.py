"""The masked-relational-KD paper's Table 1: random init vs iBOT & KD vs iBOT & RKD-D vs iBOT &
RKD-A, each pretrained with the same budget and evaluated with a linear probe and weighted kNN
(Acc@1, Acc@5), with the curves (Figure 2) and attention maps (Figure 3) of the runs: ``sslkd
experiment table1`` runs :func:`sslkd.experiments.compare.run_comparison` on these configs."""

from __future__ import annotations

DEFAULT_CONFIGS = [
    "ibot/cifar10_vit_tiny_kd",  # shipped configs, by name (sslkd.config.config_path)
    "ibot/cifar10_vit_tiny_rkd_d",
    "ibot/cifar10_vit_tiny_rkd_a",
]
