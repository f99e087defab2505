"""`sslkd report`: one self-contained HTML file with every section and non-empty images."""

import base64
import io
import re

from PIL import Image

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.eval.curves import read_records
from sslkd.train import Trainer

SECTIONS = [
    "Config",
    "Environment",
    "Loss terms and teacher/student agreement",
    "Schedules",
    "Accuracy over epochs",
    "Collapse indicators",
    "Final evaluation",
    "Attention maps",
    "t-SNE of test features",
]


def test_report_has_every_section_with_images(tmp_path):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=64)
    test = get_dataset("synthetic", "test", img_size=16, num_samples=64)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "method.name=ibot",
            "data.name=synthetic",
            "data.img_size=16",
            "model.depth=1",
            "model.patch_size=4",
            "method.out_dim=32",
            "method.hidden_dim=32",
            "method.bottleneck_dim=16",
            "train.batch_size=16",
            "train.epochs=2",
            "train.log_every=1",
            "eval.knn_every=1",
            "eval.protocols=[knn,logreg]",
            "device=cpu",
        ],
    )
    Trainer(cfg, data, test, progress=False).fit()
    monitored = [r for r in read_records(tmp_path / "run" / "metrics.jsonl") if "loss" not in r]
    assert [r["epoch"] for r in monitored] == [1, 2]  # every protocol of eval.protocols, each epoch
    assert all(0 <= r[f"{p}_top1"] <= r[f"{p}_top5"] <= 100 for r in monitored for p in ("knn", "logreg"))
    out = tmp_path / "report.html"
    assert (
        main(
            [
                "report",
                str(tmp_path / "run"),
                "--out",
                str(out),
                "--eval-train-samples",
                "64",
                "--eval-test-samples",
                "32",
                "--linear-epochs",
                "5",
            ]
        )
        == 0
    )
    page = out.read_text()
    for s in SECTIONS:
        assert f"<h2>{s}" in page, s
    assert "nothing logged" not in page and 'src="http' not in page  # self-contained
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 6  # curves, schedules, kNN, collapse, attention, t-SNE
    for b64 in images:
        img = Image.open(io.BytesIO(base64.b64decode(b64))).convert("L")
        assert img.size[0] > 100 and len(img.getcolors(maxcolors=1 << 24)) > 5  # drawn, not blank
    for key in ("lr", "teacher_temp", "effective_rank", "kNN top-1", "linear top-1", "torch"):
        assert key in page
