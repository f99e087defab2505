"""``sslkd export``: a pretrained backbone alone (no heads, no optimiser) in formats other tools read.

- ``safetensors`` / ``timm`` (the same two files): ``model.safetensors`` holds the timm model's own
  state dict, ``config.json`` timm's Hugging Face layout (``architecture``, ``num_classes``,
  ``model_args``, ``pretrained_cfg`` with mean/std/input size) plus an ``sslkd`` block (method, run,
  step, weights, stem). A ViT, or a CNN with timm's stem, loads with plain timm::

      timm.create_model("local-dir:EXPORT_DIR", pretrained=True)

  A CNN with sslkd's small-image stem (3x3 stride-1, no max-pool; ``config.json`` says
  ``"stem": "small"``) needs that stem first, then the weights (see :data:`SMALL_STEM_RECIPE`).
- ``onnx``: ``model.onnx`` with a dynamic batch axis, input ``images [B, C, H, W]`` (normalised
  with the config's mean/std), output ``features [B, D]``.

Features are what sslkd evaluates: the ViT's final-norm CLS token, a CNN's average-pooled map
(timm's ``forward`` of the exported model; for MobileNetV3, whose timm head adds a 1x1 conv after
pooling that sslkd never trains, use ``model.forward_features(x).mean((2, 3))``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sslkd.errors import TeacherError
from sslkd.models.backbone import CNNBackbone, ViTBackbone, apply_small_stem
from sslkd.pretrained import load_pretrained
from sslkd.weights import EXPORT_CONFIG, EXPORT_WEIGHTS, resolve

FORMATS = ("safetensors", "timm", "onnx")
SMALL_STEM_RECIPE = """\
model = timm.create_model(cfg["architecture"], **cfg["model_args"])
if cfg["sslkd"]["stem"] == "small" and hasattr(model, "conv1"):       # ResNets
    model.conv1 = torch.nn.Conv2d(model.conv1.in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
elif cfg["sslkd"]["stem"] == "small":                                  # MobileNet / EfficientNet
    model.conv_stem.stride = (1, 1)
model.load_state_dict(safetensors.torch.load_file(EXPORT_DIR + "/model.safetensors"))"""


def _describe(backbone: nn.Module) -> tuple[nn.Module, str, dict, str]:
    """(plain timm module whose ``forward`` gives sslkd's features, architecture, model args, stem)."""
    if isinstance(backbone, ViTBackbone):
        vit = backbone.vit
        args = {
            "img_size": int(vit.patch_embed.img_size[0]),
            "patch_size": backbone.patch_size,
            "in_chans": int(vit.patch_embed.proj.in_channels),
            "depth": len(vit.blocks),
            "num_classes": 0,
            # sslkd's features: the final norm, then the CLS token or the patch tokens' mean (timm's
            # avg pool with fc_norm off normalises before pooling, as sslkd does)
            **(
                {"global_pool": "token"}
                if backbone.pool == "cls" and backbone.num_prefix_tokens  # without a class token: pooled
                else {"global_pool": "avg", "fc_norm": False}
            ),
            "dynamic_img_size": True,
        }
        return vit, vit.pretrained_cfg["architecture"], args, "patch"
    if isinstance(backbone, CNNBackbone):
        net = backbone.net
        conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        small = getattr(net, "sslkd_small_stem", False)
        net.reset_classifier(0, "avg")  # pooled features from forward(), as sslkd's mean over positions
        return (
            net,
            net.pretrained_cfg["architecture"],
            {"in_chans": int(conv.in_channels), "num_classes": 0},
            "small" if small else "timm",
        )
    raise ValueError(f"cannot export a {type(backbone).__name__}")


def timm_module(backbone: nn.Module) -> nn.Module:
    """The plain timm model inside an sslkd backbone, whose ``forward`` gives sslkd's features."""
    return _describe(backbone)[0]


def load_export(folder: str | Path) -> nn.Module:
    """The timm model of an ``export`` folder (``config.json`` + ``model.safetensors``), with
    sslkd's small-image stem where the export says so (:data:`SMALL_STEM_RECIPE`), in eval mode."""
    folder = Path(folder)
    cfg = json.loads((folder / EXPORT_CONFIG).read_text())
    model = timm.create_model(cfg["architecture"], **cfg["model_args"])
    if cfg.get("sslkd", {}).get("stem") == "small":
        apply_small_stem(model)
    if "global_pool" not in cfg["model_args"] and hasattr(model, "reset_classifier"):
        model.reset_classifier(0, "avg")
    model.load_state_dict(load_file(str(folder / EXPORT_WEIGHTS)))
    return model.eval()


def export(
    source: str | Path,
    out: str | Path,
    weights: str = "teacher",
    model: int = 1,
    formats: tuple[str, ...] = ("safetensors",),
    force: bool = False,
) -> dict[str, Path]:
    """Write the backbone of checkpoint/run ``source`` into folder ``out``; returns the files. A
    folder that holds files already is refused unless ``force`` (an earlier export would be mixed
    with or replaced by this one); files get the usual modes (0666 less the umask)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown export format(s) {', '.join(bad)}; valid: {', '.join(FORMATS)}")
    src = resolve(source, "export source")
    if src.kind != "sslkd":  # an export re-exported, a timm name, another project's file: not a run
        raise TeacherError(f"{src.spec}: sslkd export writes the backbone of an sslkd run or checkpoint ({src.kind})")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} holds files already (an earlier export?); choose another --out or pass --force")
    pre = load_pretrained(src.path, weights, model)
    net, arch, args, stem = _describe(pre.backbone)
    net = net.eval().float()
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"{out}: the folder is not writable")
    files: dict[str, Path] = {}
    c = args["in_chans"]
    if {"safetensors", "timm"} & set(formats):
        state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
        save_file(state, str(out / EXPORT_WEIGHTS), metadata={"format": "pt", "architecture": arch})
        _usual_mode(out / EXPORT_WEIGHTS)  # safetensors writes 0600
        cfg = {
            "architecture": arch,
            "num_classes": 0,
            "num_features": int(pre.backbone.embed_dim),
            "model_args": args,
            "pretrained_cfg": {
                "input_size": [c, pre.img_size, pre.img_size],
                "mean": list(pre.mean),
                "std": list(pre.std),
                "interpolation": "bicubic",
                "crop_pct": 1.0,
                "num_classes": 0,
                "fixed_input_size": False,
            },
            "sslkd": {
                "method": pre.config.method.name,
                "run": str(pre.path),
                "step": pre.step,
                "weights": weights,
                "model": model,
                "stem": stem,
                "image_size": pre.img_size,
                "patch_size": args.get("patch_size"),
                "channels": c,
            },
        }
        (out / EXPORT_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        files.update(safetensors=out / EXPORT_WEIGHTS, config=out / EXPORT_CONFIG)
    if "onnx" in formats:  # sslkd's own feature definition (MobileNetV3's timm forward adds a head)
        x = torch.randn(2, c, pre.img_size, pre.img_size)
        torch.onnx.export(
            pre.backbone.eval().float(),
            (x,),
            str(out / "model.onnx"),
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            dynamo=False,
        )
        files["onnx"] = out / "model.onnx"
    return files


def _usual_mode(path: Path) -> None:
    """``path`` readable as any new file of this user is (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o666 & ~mask)
