"""Frozen teachers from any source, for the distillation methods (SEED, DMT), and the weights a
student starts from (``model.pretrained``), read from the same sources.

A teacher can be an sslkd run (its method is rebuilt from the checkpoint, so this module sits
above :mod:`sslkd.methods`), another project's weight file or a ``timm:`` name
(:mod:`sslkd.models.teacher`). :func:`load_teachers` reads what a method's :class:`TeacherConfig`
names; the training engine passes the result to the method (``build_method(..., teachers=)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from sslkd.errors import TeacherError
from sslkd.models import DINOHead, ModelConfig, ViTBackbone
from sslkd.models.teacher import (
    Bottleneck,
    FrozenTeacher,
    LoadReport,
    TeacherConfig,
    extract_state,
    load_external,
    read_weights_file,
)
from sslkd.pretrained import load_method
from sslkd.weights import EXPORT_WEIGHTS, resolve


def load_teacher(
    source: str | Path,
    which: str = "teacher",
    features: str = "backbone",
    arch: str | None = None,
    patch_size: int = 16,
    img_size: int | None = None,
    in_chans: int = 3,
    small_stem: bool = False,
    strict: bool = True,
    depth: int | None = None,
) -> tuple[FrozenTeacher, LoadReport]:
    """Load a frozen teacher from ``source``: an sslkd run folder or checkpoint, a weight file in
    another project's layout or ``timm:<model>`` (:mod:`sslkd.models.teacher`).

    ``which``: the ``teacher`` (EMA / momentum) or ``student`` weights where a file has both.
    ``features``: ``backbone`` (CLS / pooled features), ``head`` (an sslkd checkpoint's
    projection head; for DINO/iBOT heads its L2-normalised bottleneck) or ``auto`` (the head where
    the checkpoint has one, else the backbone: another project's file or timm model, whose
    projection head is not kept; the report says which). ``arch``, ``patch_size``,
    ``img_size``, ``in_chans``, ``small_stem``, ``depth`` describe the model of an external file (an sslkd
    checkpoint carries its own); ``img_size`` is also the size inputs are resized to.
    ``strict``: a model tensor absent from the file is an error (else only reported)."""
    if which not in ("teacher", "student"):
        raise TeacherError(f"teacher weights must be 'teacher' or 'student', got '{which}'")
    if features not in ("backbone", "head", "auto"):
        raise TeacherError(f"teacher features must be 'backbone', 'head' or 'auto', got '{features}'")
    src = resolve(source, "teacher")
    if src.kind == "sslkd":
        return _from_sslkd(src.path, which, features, img_size)
    return load_external(src, which, features, arch, patch_size, img_size, in_chans, small_stem, strict, depth)


def load_teachers(mcfg: TeacherConfig, in_chans: int) -> list[FrozenTeacher]:
    """The teachers ``mcfg`` names, each with its :class:`LoadReport` as ``.report``; a teacher
    made for another number of channels than the data's is an error."""
    teachers = []
    for source in mcfg.teacher_sources():
        t, report = load_teacher(
            source,
            mcfg.teacher_weights,
            mcfg.teacher_output(),
            mcfg.teacher_arch,
            mcfg.teacher_patch_size,
            mcfg.teacher_img_size,
            in_chans,
            mcfg.teacher_small_stem,
        )
        if t.in_chans != in_chans:
            raise TeacherError(f"teacher {source} takes {t.in_chans}-channel images, the data has {in_chans}")
        t.report = report
        teachers.append(t)
    return teachers


def _from_sslkd(path: Path, which: str, features: str, img_size: int | None) -> tuple[FrozenTeacher, LoadReport]:
    method, _, ckpt_path = load_method(path)
    net = method.teacher if which == "teacher" and hasattr(method, "teacher") else method.student
    if isinstance(net, nn.ModuleList):  # MOKD: its first model
        net = net[0]
    head = None
    if features in ("head", "auto"):
        head = getattr(net, "head", None)
        if head is None and features == "head":
            raise TeacherError(f"{ckpt_path}: the {method.method_name} network has no projection head")
        if isinstance(head, DINOHead):
            head = Bottleneck(head)
    backbone = net.backbone
    report = LoadReport(
        str(ckpt_path),
        f"sslkd {method.method_name}",
        loaded=len(backbone.state_dict()) + (len(head.state_dict()) if head else 0),
        features="backbone"
        if head is None
        else f"projection head{' bottleneck' if isinstance(head, Bottleneck) else ''}",
    )
    return FrozenTeacher(backbone, head, img_size or method.img_size), report


@dataclass
class Weights:
    """A timm-style state dict read from ``source`` (its ``layout``), for ``model.pretrained``."""

    source: str
    layout: str
    state: dict[str, torch.Tensor]


def load_weights(cfg, read: bool = True) -> dict[str, Weights]:
    """``{spec: Weights}`` for every ``pretrained`` of the config's model sections (``model``, and
    any other such as MOKD's ``method.model2``): an sslkd run or checkpoint (its EMA ``teacher``
    backbone), another project's file (the layouts of :mod:`sslkd.models.teacher`) or ``timm:<name>``
    (timm's pretrained weights; needs a network). ``read=False``: the specs only (values None)."""
    specs = {mc.pretrained for mc in _model_sections(cfg) if mc.pretrained}
    return {spec: _read_weights(spec) if read else None for spec in sorted(specs)}


def _model_sections(obj) -> list[ModelConfig]:
    found = [obj] if isinstance(obj, ModelConfig) else []
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            found += _model_sections(getattr(obj, f.name))
    return found


def _read_weights(spec: str) -> Weights:
    src = resolve(spec, "model.pretrained")
    if src.kind == "timm":
        name = src.timm_name
        try:
            net = timm.create_model(name, pretrained=True)
        except Exception as e:  # no network, unknown name, missing file: all end here
            raise TeacherError(
                f"model.pretrained={spec}: cannot get timm's pretrained weights ({type(e).__name__}: {e}); "
                f"without a network, download them elsewhere and name the file instead"
            ) from e
        return Weights(spec, "timm", net.state_dict())
    path = src.path
    if src.kind == "export":  # the timm model's own state dict
        return Weights(spec, "sslkd export", read_weights_file(path / EXPORT_WEIGHTS))
    if src.kind == "sslkd":
        method, _, ckpt_path = load_method(path)
        backbone = method.eval_backbone("teacher")
        inner = backbone.vit if isinstance(backbone, ViTBackbone) else backbone.net
        return Weights(str(ckpt_path), f"sslkd {method.method_name}", inner.state_dict())
    layout, state = extract_state(read_weights_file(path), "teacher", path)
    return Weights(str(path), layout, state)
