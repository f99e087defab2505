"""Modules loaded on first use, for the command line: ``sslkd --help`` and every sub-command's
``--help`` answer without importing PyTorch, while each command module still names what it uses
at its top (``api = lazy_import("sslkd.api")``; tests/test_layers.py reads these as imports)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for module ``name`` and imports it at the first attribute read. Not registered in
    ``sys.modules`` (tools that walk it, such as PyTorch's own import through ``inspect``, would
    trigger the import halfway through theirs)."""

    def __init__(self, name: str) -> None:
        self._name, self._module = name, None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


def lazy_import(name: str) -> ModuleType:
    """sslkd module ``name``, imported when one of its attributes is first read."""
    if not name.startswith("sslkd."):
        raise ValueError(f"lazy_import loads sslkd's own modules, not '{name}'")
    return LazyModule(name)  # type: ignore[return-value]
