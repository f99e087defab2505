"""Generated documentation: the config-key reference, written from the dataclasses themselves so
that it cannot drift from the code (``python -m sslkd.docs > docs/config-keys.md``; a test
checks the checked-in page is current)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from sslkd.config import AugConfig, DataConfig, EvalConfig, ModelConfig, TrainConfig
from sslkd.data.registry import OPTIONS
from sslkd.methods import METHODS
from sslkd.schema import describe


def _comments(cls) -> dict[str, str]:
    """The ``# ...`` comment at the end of each field's line in the class source."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _rows(prefix: str, cls, overrides: dict | None = None) -> list[str]:
    rows = []
    notes = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            notes.update(_comments(klass))
    notes.update(overrides or {})  # a section reused elsewhere (MOKD's model2) says what differs there
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = ""
        if dataclasses.is_dataclass(default):
            rows += _rows(f"{prefix}{f.name}.", type(default), f.metadata.get("notes"))
            continue
        ftype = describe(hints[f.name])
        cells = [f"`{prefix}{f.name}`", f"`{ftype}`", f"`{default!r}`", notes.get(f.name, "")]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def config_keys_markdown() -> str:
    """The whole reference page."""
    lines = [
        "# Config keys",
        "",
        "Generated from the config dataclasses (`sslkd/config.py`, `sslkd/models/backbone.py`, each method's)",
        "by `python -m sslkd.docs`.",
        "Any key can be set in a YAML file or with `--set key=value`; an unknown key, a wrong type or an",
        "impossible value is rejected before any work, naming the key.",
        "",
    ]
    sections = [(f"`{name}`", f"{name}.", cls) for name, cls in (
        ("data", DataConfig), ("aug", AugConfig), ("model", ModelConfig), ("train", TrainConfig), ("eval", EvalConfig)
    )]  # fmt: skip
    sections += [(f"`data.options` when `data.name: {n}`", "data.options.", c) for n, c in OPTIONS.items()]
    sections += [(f"`method` when `method.name: {n}`", "method.", m.config_class) for n, m in METHODS.items()]
    for title, prefix, cls in sections:
        lines += [f"## {title}", "", "| key | type | default | note |", "| --- | --- | --- | --- |"]
        lines += _rows(prefix, cls) + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_keys_markdown(), end="")
