"""Frozen teachers for distillation (SEED, DMT): a backbone (+ its projection head where the
source has one sslkd can use) in eval mode, without gradients, and how a method's config names
them (:class:`TeacherConfig`). This module reads other projects' weights; an sslkd run as a teacher
is read by :mod:`sslkd.teachers` (it rebuilds the run's method). Sources:

- a local file in the layouts other projects publish, remapped onto the timm model:

  ============  ==========================================================================
  layout        recognised by
  ============  ==========================================================================
  dino / ibot   top-level ``teacher`` / ``student`` dicts; ``module.`` / ``backbone.``
                prefixes stripped, ``head.`` (projection) dropped
  mocov3        ``state_dict`` with ``module.base_encoder.`` (``student``) and
                ``module.momentum_encoder.`` (``teacher``); ``head.`` / ``fc.`` dropped
  mocov2        ``state_dict`` with ``module.encoder_q.`` / ``module.encoder_k.``; ``fc.``: the head
  mae           ``model``; ``decoder*`` and ``mask_token`` dropped
  dinov2        a flat dict with ``mask_token`` and LayerScale (``ls1.gamma``); ``register_tokens``
                with registers (an alias ``teacher_arch`` becomes timm's ``*_dinov2`` model)
  dinov3        ``storage_tokens`` (RoPE, LayerScale; an alias becomes timm's ``*_dinov3`` EVA
                model, read through its tokens: SEED, not DMT's token fusion)
  clip          ``visual.*`` keys of an OpenAI / OpenCLIP checkpoint (the image tower; an alias
                becomes timm's ``*_clip_224`` model; OpenAI's own weights: ``*_clip_quickgelu_224``)
  timm          a flat tensor dict (``.pth``/``.bin`` or ``.safetensors``)
  ============  ==========================================================================

- ``timm:<model name>``: timm's pretrained weights (needs a network).

Files are read with ``weights_only=True`` or safetensors: nothing is unpickled. A position
embedding for another grid is resampled (reported); any other shape mismatch or a missing key
is an error that lists the keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models.eva import checkpoint_filter_fn as eva_checkpoint_filter
from timm.models.vision_transformer import _convert_dinov2, _convert_openai_clip  # timm's own remapping
from torch import nn

from sslkd.errors import TeacherError
from sslkd.models.backbone import VITS, Backbone, CNNBackbone, ViTBackbone, build_backbone, is_vit
from sslkd.models.heads import DINOHead, MoCoHead
from sslkd.schema import Positive
from sslkd.weights import EXPORT_WEIGHTS, WeightSource, resolve


@dataclass
class TeacherConfig:
    """How a distillation method's frozen teachers are read (SEED, DMT extend it with their sources)."""

    teacher_weights: Literal["teacher", "student"] = "teacher"  # the EMA / momentum weights, or the student's
    teacher_arch: str | None = None  # another project's file: its architecture (vit_small, resnet50, ...)
    teacher_patch_size: Positive = 16  # another project's ViT file: its patch size
    teacher_img_size: Positive | None = None  # resize the student's crop for the teacher (None: as is)
    teacher_small_stem: bool = False  # another project's CNN file: built with sslkd's small-image stem

    def teacher_sources(self) -> list[str]:
        """The teachers: sslkd run folders / checkpoints, weight files or ``timm:<model>`` names
        (each distillation config says which of its keys hold them: SEED one, DMT a list)."""
        raise NotImplementedError(f"{type(self).__name__} names no teacher sources")

    def teacher_output(self) -> str:
        """What the teachers output: ``backbone`` features, their ``head``'s, or ``auto``."""
        return "backbone"


@dataclass
class LoadReport:
    """How a teacher's weights were matched onto its model."""

    source: str
    layout: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    features: str = "backbone"  # what the teacher outputs: its backbone's features or its projection head's

    def __str__(self) -> str:
        parts = [
            f"teacher {self.source} ({self.layout} layout): {self.loaded} tensors loaded, features: {self.features}"
        ]
        for name in ("missing", "unexpected", "resampled"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{len(keys)} {name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
        return "; ".join(parts)


class FrozenTeacher(nn.Module):
    """``forward(x [B, C, H, W]) -> [B, out_dim]``: the backbone's CLS/pooled features, or the
    projection head's output when one is given. Always in eval mode (BatchNorm statistics and
    dropout frozen), never trained; ``img_size`` resizes inputs for a teacher made for other sizes
    (without it, a ViT teacher resizes a crop that is not a multiple of its patch, e.g. DINOv2's 14,
    down to the nearest one)."""

    def __init__(self, backbone: Backbone, head: nn.Module | None = None, img_size: int | None = None) -> None:
        super().__init__()
        self.backbone, self.head, self.img_size = backbone, head, img_size
        self.in_chans = backbone_in_chans(backbone)
        self.requires_grad_(False)
        self.train(False)
        self.patch = backbone.patch_size if isinstance(backbone, ViTBackbone) else 1
        with torch.no_grad():
            size = img_size or max(32 // self.patch, 2) * self.patch
            self.out_dim = int(self.forward(torch.zeros(2, self.in_chans, size, size)).shape[-1])

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        if not self.img_size and x.shape[-1] % self.patch == 0 and x.shape[-2] % self.patch == 0:
            return x
        size = self.img_size or max(self.patch, x.shape[-1] // self.patch * self.patch)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, _ = self.backbone.forward_features(self._fit(x))
        return self.head(cls) if self.head is not None else cls

    @torch.no_grad()
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens ``[B, 1 + N, D]`` (CLS first) after the final norm, for token-level distillation."""
        cls, tok = self.backbone.forward_features(self._fit(x))
        return torch.cat([cls[:, None], tok], 1)


class Bottleneck(nn.Module):
    """A DINO/iBOT head cut before its prototype layer: the L2-normalised bottleneck."""

    def __init__(self, head: DINOHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.bottleneck(x)


# MoCo v1/v2 files hold a query and a key (momentum) encoder; SEED's code and MoCo's linear
# evaluation load the query encoder
MOCOV2_ENCODER = "module.encoder_q."


def backbone_in_chans(backbone: Backbone) -> int:
    if isinstance(backbone, ViTBackbone):
        return backbone.vit.patch_embed.proj.in_channels
    return next(m for m in backbone.modules() if isinstance(m, nn.Conv2d)).in_channels


def load_external(
    source: str | Path | WeightSource,
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
    """A frozen teacher from another project's file or ``timm:<model>`` (see the module doc); the
    arguments as :func:`sslkd.teachers.load_teacher`'s."""
    src = source if isinstance(source, WeightSource) else resolve(source, "teacher")
    if src.kind == "timm":
        return _from_timm(src.timm_name, img_size, in_chans)
    path = src.path
    if src.kind == "export":  # its safetensors is the timm model's own state dict
        path = path / EXPORT_WEIGHTS
    if path.is_file() and not _looks_like_weights(path):
        with open(path, "rb") as f:
            head = f.read(8)
        raise TeacherError(
            f"{path}: not a checkpoint file (a PyTorch checkpoint is a zip archive or a pickle, a safetensors "
            f"file starts with its header's length; this starts with {head!r})"
        )
    if arch is None:
        raise TeacherError(
            f"{path}: an external checkpoint needs its architecture (teacher_arch, one of "
            f"vit_tiny/vit_small/vit_base/resnet18/... )"
        )
    raw = read_weights_file(path)
    layout, state = extract_state(raw, which, path)
    head = moco_head(raw["state_dict"], which) if layout == "mocov2" and features != "backbone" else None
    if features == "head" and head is None:
        raise TeacherError(
            f"{path}: only sslkd checkpoints and MoCo v2 files with their MLP (fc.0, fc.2) carry a projection "
            f"head sslkd can use; use features 'backbone'"
        )
    arch, file_patch = _foundation_arch(layout, arch, state)
    patch_size = file_patch or patch_size
    build_size = img_size
    if is_vit(arch) or layout == "dinov3":  # the file's own depth and grid: no resampling needed
        blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
        depth = depth or (max(blocks) + 1 if blocks else None)
        pos = state.get("pos_embed")
        n = pos.shape[1] if pos is not None and pos.ndim == 3 else 0
        grid = math.isqrt(n) if math.isqrt(n) ** 2 == n else math.isqrt(max(n - 1, 0))  # prefix tokens or not
        build_size = build_size or (grid * patch_size if grid else None)
    backbone = build_backbone(arch, build_size or 224, patch_size, in_chans, small_stem=small_stem, depth=depth)
    if layout == "dinov3":  # RoPE, storage tokens, LayerScale: timm's EVA model and converter
        state = eva_checkpoint_filter(dict(state), backbone.net)
    report = load_into(backbone, state, layout, str(path), strict)
    if head is not None:
        report.loaded += len(head.state_dict())
        report.features = "projection head (MoCo v2 MLP, " + "-".join(str(w) for w in head.widths) + ")"
    return FrozenTeacher(backbone, head, img_size), report


def moco_head(sd: dict, which: str) -> MoCoHead | None:
    """The projection head of a MoCo v1/v2 checkpoint, the query encoder's (``which`` does not
    matter: SEED's code loads ``encoder_q`` as its teacher, as MoCo's own evaluation does): SEED
    distils this output (128-d), not the pooled features. None if the file has none."""
    enc = MOCOV2_ENCODER
    fc = {k[len(enc) + 3 :]: v for k, v in sd.items() if k.startswith(enc + "fc.")}
    names = ["0", "2"] if "0.weight" in fc and "2.weight" in fc else [""] if "weight" in fc else []
    if not names:
        return None
    return MoCoHead([(fc[f"{n}.weight" if n else "weight"], fc[f"{n}.bias" if n else "bias"]) for n in names])


def _from_timm(name: str, img_size: int | None, in_chans: int) -> tuple[FrozenTeacher, LoadReport]:
    vit = is_vit(name.split(".")[0])
    kw = dict(dynamic_img_size=True) if vit else dict(global_pool="")
    try:
        net = timm.create_model(name, pretrained=True, num_classes=0, in_chans=in_chans, **kw)
    except Exception as e:  # no network, unknown name, missing file: all end here
        raise TeacherError(
            f"cannot get timm's pretrained weights for '{name}' ({type(e).__name__}: {e}). "
            f"This machine may have no network: download the weights elsewhere and pass the "
            f"file instead (--teacher path/to/model.safetensors with teacher_arch set)"
        ) from e
    backbone = ViTBackbone(net) if vit else CNNBackbone(net, in_chans)
    return FrozenTeacher(backbone, None, img_size), LoadReport(f"timm:{name}", "timm", len(net.state_dict()))


def _looks_like_weights(path: Path) -> bool:
    """A PyTorch zip or pickle, or a safetensors file (8-byte header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or (len(head) == 9 and head[8:9] == b"{")


def read_weights_file(path: Path) -> dict:
    """A weight file as a dict, read without unpickling code (weights-only torch.load, or safetensors)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:
            raise TeacherError(f"{path}: unreadable safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TeacherError(
            f"{path}: cannot be read as a weights-only checkpoint ({type(e).__name__}: {e}); "
            f"sslkd does not unpickle arbitrary objects"
        ) from e
    if not isinstance(obj, dict):
        raise TeacherError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def extract_state(obj: dict, which: str = "teacher", path: Path | str = "") -> tuple[str, dict[str, torch.Tensor]]:
    """``(layout, flat timm-style state dict)`` of a loaded checkpoint, projection heads and
    decoders dropped."""
    if "teacher" in obj or "student" in obj:
        layout, state = "dino/ibot", obj.get(which) or obj.get("teacher") or obj["student"]
        for prefix in ("module.", "backbone."):
            if state and all(k.startswith(prefix) or k.startswith("head.") for k in state):
                state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    elif "state_dict" in obj and any(
        k.startswith(("module.base_encoder.", "module.encoder_q.")) for k in obj["state_dict"]
    ):
        sd = obj["state_dict"]
        if any(k.startswith("module.base_encoder.") for k in sd):
            layout = "mocov3"
            enc = (
                "module.momentum_encoder."
                if which == "teacher" and any(k.startswith("module.momentum_encoder.") for k in sd)
                else "module.base_encoder."
            )
        else:
            layout, enc = "mocov2", MOCOV2_ENCODER
        state = {k: v for k, v in _strip(sd, enc).items() if not k.startswith(("head.", "fc."))}
    elif "model" in obj and isinstance(obj["model"], dict):
        layout = "mae"
        state = {k: v for k, v in obj["model"].items() if not k.startswith(("decoder", "mask_token"))}
    else:
        layout, state = "timm", obj.get("state_dict", obj)
        if state and all(k.startswith("module.") for k in state):
            state = _strip(state, "module.")
        layout, state = _foundation(layout, state)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or bad:
        raise TeacherError(
            f"{path}: no tensor state dict found in the {layout} layout"
            + (f" (non-tensor entries: {', '.join(bad[:5])})" if bad else "")
        )
    return layout, state


def _foundation(layout: str, state: dict) -> tuple[str, dict]:
    """Today's foundation models' own layouts, remapped to timm's keys by timm's converters:
    DINOv2 (LayerScale, a mask token; with registers: ``register_tokens``, a position embedding
    without the prefix tokens) and CLIP image towers (OpenAI / OpenCLIP ``visual.*``; the text tower
    and the projection are dropped)."""
    if "storage_tokens" in state:  # remapped once the model is built (timm's converter needs it)
        return "dinov3", state
    if "mask_token" in state and any(k.endswith(".ls1.gamma") for k in state):
        registers = "register_tokens" in state
        return ("dinov2+registers" if registers else "dinov2"), _convert_dinov2(dict(state), None)
    clip = next((k for k in state if k.endswith("visual.class_embedding")), None)
    if clip is not None:
        converted = _convert_openai_clip(state, None, prefix=clip[: -len("class_embedding")])
        return "clip", {k: v for k, v in converted.items() if not k.startswith("head.")}
    return layout, state


def _foundation_arch(layout: str, arch: str, state: dict) -> tuple[str, int | None]:
    """(timm model, patch size) for a foundation layout named by an alias (``vit_small`` + DINOv2
    weights -> ``vit_small_patch14_dinov2``); a timm name is kept. The patch size is the file's."""
    weight = state.get("patch_embed.proj.weight")
    patch = (
        int(weight.shape[-1])
        if weight is not None and layout in ("dinov2", "dinov2+registers", "clip", "dinov3")
        else None
    )
    if arch in VITS and layout.startswith("dinov2"):
        return f"{arch}_patch{patch}{'_reg4' if layout.endswith('registers') else ''}_dinov2", patch
    if arch in VITS and layout == "clip":
        return f"{arch}_patch{patch}_clip_224", patch
    if arch in VITS and layout == "dinov3":
        return f"{arch}_patch{patch}_dinov3", patch
    return arch, patch


def load_into(
    backbone: Backbone, state: dict[str, torch.Tensor], layout: str = "timm", source: str = "", strict: bool = True
) -> LoadReport:
    """Copy a timm-style ``state`` into ``backbone``'s timm model; resample a ViT position
    embedding for another grid; everything else must match in name and shape."""
    inner = backbone.vit if isinstance(backbone, ViTBackbone) else backbone.net
    target = inner.state_dict()
    report = LoadReport(source, layout)
    report.unexpected = sorted(k for k in state if k not in target)
    report.missing = sorted(k for k in target if k not in state)
    mismatched, load = [], {}
    for k, v in state.items():
        if k not in target:
            continue
        if k == "pos_embed" and v.shape != target[k].shape and v.ndim == 3 and v.shape[-1] == target[k].shape[-1]:
            n_file = v.shape[1] - math.isqrt(v.shape[1]) ** 2  # the file's prefix slots (0 or 1 and up)
            n_model = target[k].shape[1] - math.isqrt(target[k].shape[1]) ** 2
            if n_file == n_model:
                grid = math.isqrt(target[k].shape[1] - n_model)
                v = resample_abs_pos_embed(v, (grid, grid), num_prefix_tokens=n_file)
                report.resampled.append(k)
        if v.shape != target[k].shape:
            mismatched.append(f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}")
            continue
        load[k] = v
    # a parameter of the model's own kind that the model lacks (LayerScale, registers, ...): another
    # architecture, not a head to drop
    kinds = {k.split(".")[0] for k in target}
    foreign = [
        k for k in report.unexpected if k.split(".")[0] in kinds or k.endswith("_token") or k.endswith("_tokens")
    ]
    hints = []
    if any(m.startswith("conv1.weight") for m in mismatched):
        hints.append("a 7x7 stem against sslkd's small 3x3 one: set model.small_stem=false")
    if any(m.startswith("patch_embed.proj.weight") for m in mismatched):
        hints.append("another patch size: set model.patch_size (or teacher_patch_size) to the file's")
    if foreign:
        hints.append("keys of another architecture: name the file's own model (e.g. timm's *_dinov2 name)")
    if mismatched or (strict and (foreign or report.missing)):
        raise TeacherError(
            f"{source}: the file does not match the architecture. "
            + (f"Shape mismatches: {'; '.join(mismatched[:6])}. " if mismatched else "")
            + (f"Missing in the file: {', '.join(report.missing[:8])}. " if report.missing else "")
            + (f"Not in the model: {', '.join(report.unexpected[:8])}. " if report.unexpected else "")
            + (f"Likely: {'; '.join(hints)}." if hints else "")
        )
    inner.load_state_dict(load, strict=False)
    report.loaded = len(load)
    return report
