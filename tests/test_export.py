"""`sslkd export`: plain timm (in a process that never imports sslkd) and onnxruntime give the
features sslkd evaluates."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.pretrained import load_pretrained
from sslkd.train import Trainer

LOADER = r"""
import json, sys
import safetensors.torch, timm, torch
d, inp, outp = sys.argv[1:4]
cfg = json.load(open(d + "/config.json"))
if cfg["sslkd"]["stem"] == "small":
    EXPORT_DIR = d
    exec(sys.argv[4])
else:
    model = timm.create_model("local-dir:" + d, pretrained=True)
model.eval()
with torch.no_grad():
    torch.save(model(torch.load(inp)), outp)
assert not any(m == "sslkd" or m.startswith("sslkd.") for m in sys.modules), "sslkd was imported"
"""


def _run(tmp_path, backbone):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=16)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "method.name=dino",
            f"model.backbone={backbone}",
            "model.depth=2",
            "model.patch_size=4",
            "method.out_dim=32",
            "method.hidden_dim=32",
            "method.bottleneck_dim=16",
            "train.batch_size=8",
            "train.max_steps=2",
            "device=cpu",
            "aug.local_crops_number=0",
        ],
    )
    Trainer(cfg, data, progress=False).fit()
    return tmp_path / "run"


@pytest.mark.parametrize("backbone", ["vit_tiny", "resnet18"])
def test_export_loads_in_plain_timm_with_the_same_features(tmp_path, backbone):
    from sslkd.export import SMALL_STEM_RECIPE

    run = _run(tmp_path, backbone)
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sslkd"]["method"] == "dino" and cfg["pretrained_cfg"]["input_size"] == [3, 16, 16]
    x = torch.randn(4, 3, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    subprocess.run(
        [sys.executable, "-c", LOADER, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt"), SMALL_STEM_RECIPE],
        check=True,
    )
    expected = load_pretrained(run).backbone(x).detach()
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, atol=1e-5, rtol=1e-5)


def test_onnx_export_matches_pytorch_with_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    run = _run(tmp_path, "vit_tiny")
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--format", "onnx"]) == 0
    session = ort.InferenceSession(str(out / "model.onnx"))
    x = torch.randn(5, 3, 16, 16)  # exported with batch 2
    got = session.run(None, {"images": x.numpy()})[0]
    expected = load_pretrained(run).backbone(x).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_export_unknown_format_is_named(tmp_path):
    from sslkd.export import export

    with pytest.raises(ValueError, match="valid: safetensors, timm, onnx"):
        export(tmp_path, tmp_path / "x", formats=("tflite",))


def test_export_refuses_a_used_folder_writes_usual_modes_and_names_an_unwritable_one(tmp_path, capsys):
    """Issue 31, item 7: no silent overwrite (``--force`` to mean it), files readable as any other
    (safetensors alone writes 0600), one line for a read-only target."""
    import os
    import stat

    run = _run(tmp_path, "vit_tiny")
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    mask = os.umask(0)
    os.umask(mask)
    for f in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((out / f).stat().st_mode) == 0o666 & ~mask, f
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "holds files already" in err and "--force" in err and len(err.splitlines()) == 1
    assert main(["export", str(run), "--out", str(out), "--force"]) == 0
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert main(["export", str(run), "--out", str(locked)]) != 0
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
