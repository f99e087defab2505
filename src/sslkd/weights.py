"""Where weights come from: the one reading of a weight source, for every place that takes one
(a teacher, ``model.pretrained``, :func:`sslkd.load_backbone`, ``sslkd export``).

A source is ``timm:<model name>`` (timm's pretrained weights; needs a network), an ``sslkd
export`` folder (``model.safetensors`` + ``config.json``), an sslkd run folder or checkpoint, or
another project's weight file (``.pth`` / ``.safetensors``, the layouts of
:mod:`sslkd.models.teacher`). What each place does with it stays with that place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sslkd import checkpoint as ckpt
from sslkd.errors import CheckpointError, TeacherError

EXPORT_WEIGHTS, EXPORT_CONFIG = "model.safetensors", "config.json"  # an export folder's two files
KINDS = "an sslkd run folder or checkpoint, an sslkd export folder, a .pth/.safetensors file, or timm:<model name>"


@dataclass(frozen=True)
class WeightSource:
    """A weight source, told apart: ``kind`` and, but for ``timm``, the ``path``."""

    kind: Literal["timm", "export", "sslkd", "file"]
    spec: str
    path: Path | None = None

    @property
    def timm_name(self) -> str:
        return self.spec.removeprefix("timm:")


def resolve(spec: str | Path, role: str = "weights") -> WeightSource:
    """The kind of weight source ``spec`` names; one that does not exist is a
    :class:`~sslkd.errors.TeacherError` that says what ``role`` (``teacher``,
    ``model.pretrained``, ...) accepts."""
    spec = str(spec)
    if spec.startswith("timm:"):
        return WeightSource("timm", spec)
    path = Path(spec)
    if not path.exists():
        raise TeacherError(f"{role} not found: {spec} (expected {KINDS})")
    if is_export(path):
        return WeightSource("export", spec, path)
    if path.is_dir() or _is_sslkd_checkpoint(path):
        return WeightSource("sslkd", spec, path)
    return WeightSource("file", spec, path)


def is_export(path: Path) -> bool:
    """Whether ``path`` is an ``sslkd export`` folder (safetensors + timm's config.json)."""
    return (path / EXPORT_CONFIG).is_file() and (path / EXPORT_WEIGHTS).is_file()


def _is_sslkd_checkpoint(path: Path) -> bool:
    if path.suffix == ".safetensors" or not path.is_file():
        return False
    try:
        ckpt.load(path)
    except CheckpointError:
        return False
    return True
