"""sslkd: self-supervised knowledge distillation of visual representations.

The Python API (:mod:`sslkd.api`: ``sslkd.pretrain``, ``sslkd.evaluate``, ``sslkd.load_backbone``,
``sslkd.Run``) loads on first use, so that ``import sslkd`` and the command line's ``--help`` do
not wait for PyTorch.
"""

import importlib

__version__ = "0.1.0"

_API = ("Run", "evaluate", "load_backbone", "pretrain")


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module("sslkd.api"), name)
    raise AttributeError(f"module 'sslkd' has no attribute '{name}'")
