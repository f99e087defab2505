"""Generated documentation: the config-key reference, written from the dataclasses themselves so
that it cannot drift from the code (``python -m sslkd.docs > docs/config-keys.md``; a test
checks the checked-in page is current)."""

from __future__ import annotations

import dataclasses
import inspect
import re

from sslkd.config import AugConfig, DataConfig, EvalConfig, ModelConfig, TrainConfig
from sslkd.methods import METHODS


def _comments(cls) -> dict[str, str]:
    """The ``# ...`` comment at the end of each field's line in the class source."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _rows(prefix: str, cls) -> list[str]:
    rows = []
    notes = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            notes.update(_comments(klass))
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = ""
        if dataclasses.is_dataclass(default):
            rows += _rows(f"{prefix}{f.name}.", type(default))
            continue
        ftype = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        cells = [f"`{prefix}{f.name}`", f"`{ftype}`", f"`{default!r}`", notes.get(f.name, "")]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def config_keys_markdown() -> str:
    """The whole reference page."""
    lines = ["# Config keys", "",
             "Generated from `sslkd/config.py` and each method's config dataclass by `python -m sslkd.docs`.",
             "Any key can be set in a YAML file or with `--set key=value`; an unknown key, a wrong type or an",
             "impossible value is rejected before any work, naming the key.", ""]
    for section, cls in (("data", DataConfig), ("aug", AugConfig), ("model", ModelConfig), ("train", TrainConfig),
                         ("eval", EvalConfig)):
        lines += [f"## `{section}`", "", "| key | type | default | note |", "| --- | --- | --- | --- |"]
        lines += _rows(f"{section}.", cls) + [""]
    for name, method in METHODS.items():
        lines += [f"## `method` when `method.name: {name}`", "", "| key | type | default | note |",
                  "| --- | --- | --- | --- |"]
        lines += _rows("method.", method.config_class) + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_keys_markdown(), end="")
