"""Modules loaded on first use, for the command line: ``sslkd --help`` and every sub-command's
``--help`` answer without importing PyTorch, while each command module still names what it uses
at its top (``api = lazy_import("sslkd.api")``; tests/test_layers.py reads these as imports).
:func:`optional_import` does the same for a dependency of one optional feature (an extra)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for module ``name`` and imports it at the first attribute read. Not registered in
    ``sys.modules`` (tools that walk it, such as PyTorch's own import through ``inspect``, would
    trigger the import halfway through theirs)."""

    def __init__(self, name: str, missing: str = "") -> None:
        self._name, self._module, self._missing = name, None, missing

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            try:
                self._module = importlib.import_module(self._name)
            except ModuleNotFoundError as e:
                if not self._missing or e.name != self._name.split(".")[0]:
                    raise
                raise ModuleNotFoundError(self._missing, name=e.name) from None
        return getattr(self._module, attr)


def lazy_import(name: str) -> ModuleType:
    """sslkd module ``name``, imported when one of its attributes is first read."""
    if not name.startswith("sslkd."):
        raise ValueError(f"lazy_import loads sslkd's own modules, not '{name}'")
    return LazyModule(name)  # type: ignore[return-value]


def optional_import(name: str, extra: str, feature: str) -> ModuleType:
    """Third-party module ``name`` of an optional ``feature``, imported at first use; when it is
    not installed, that use raises one line naming the extra that installs it."""
    return LazyModule(name, f"{feature} needs the '{name}' package: pip install 'sslkd[{extra}]'")  # type: ignore[return-value]
