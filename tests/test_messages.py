"""Messages that used to mislead: a text file as a teacher, rows that shared a label, config keys
without a description, an unlabelled folder of albums asked for accuracy."""

import numpy as np
import pytest
from PIL import Image

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.docs import config_keys_markdown
from sslkd.errors import TeacherError
from sslkd.experiments.compare import labels_of
from sslkd.teachers import load_teacher


def test_a_text_file_as_teacher_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("not weights\n")
    with pytest.raises(TeacherError, match=r"notes\.txt: not a checkpoint file .*b'not weig"):
        load_teacher(tmp_path / "notes.txt")  # before: "needs its architecture (teacher_arch ...)"


def test_two_configs_of_one_method_get_their_own_labels():
    kd = load_config("ibot/cifar10_vit_tiny_kd")
    variant = load_config("ibot/cifar10_vit_tiny_kd", ["name=kd-longer-warmup"])
    rkd = load_config("ibot/cifar10_vit_tiny_rkd_a")
    assert labels_of([kd, variant, rkd], ["a", "b", "c"]) == [
        "ibot-kd-cifar10-vit-tiny",
        "kd-longer-warmup",
        "iBOT & RKD-A",
    ]
    assert labels_of([kd, kd], ["a", "b"]) == ["a", "b"]  # same name too: the run folders


def test_every_config_key_has_a_description():
    rows = [r.split("|") for r in config_keys_markdown().splitlines() if r.startswith("| `")]
    assert rows and not [r[1] for r in rows if not r[4].strip()]


def test_albums_are_not_scored_as_classes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(6):
        (tmp_path / f"album{i % 3}").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f"album{i % 3}/{i}.jpg")
    args = ["eval", "knn", "--random-init", "--dataset", "imagefolder", "--root", str(tmp_path), "--img-size", "16"]
    assert main(args) == 1
    assert "has no held-out split" in capsys.readouterr().err
