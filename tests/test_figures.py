import json

import pytest
import torch
from PIL import Image

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import get_dataset
from sslkd.eval.attention import cls_attention
from sslkd.models import build_backbone
from sslkd.train import Trainer


def test_cls_attention_is_a_distribution_and_threshold_keeps_mass():
    torch.manual_seed(0)
    bb = build_backbone("vit_tiny", img_size=16, patch_size=4, in_chans=3, depth=2).eval()
    x = torch.randn(2, 3, 16, 16)
    attn = bb.attention_maps(x)
    assert attn.shape == (2, 3, 17, 17)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 17))
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    maps = cls_attention(bb, images, (0.5,) * 3, (0.25,) * 3)
    assert maps.shape == (2, 3, 16, 16)
    binary = cls_attention(bb, images, (0.5,) * 3, (0.25,) * 3, threshold=0.6)
    assert set(binary.unique().tolist()) <= {0.0, 1.0}
    raw = bb.attention_maps((images.float() / 255 - 0.5) / 0.25)[:, :, 0, 1:]
    raw = raw / raw.sum(-1, keepdim=True)
    kept = (raw * binary[:, :, ::4, ::4].reshape(2, 3, 16)).sum(-1)
    assert (kept >= 0.6 - 1e-6).all() and (kept < 0.6 + raw.max()).all()


def test_curves_and_attention_commands(tmp_path, capsys):
    data = get_dataset("synthetic", "train", img_size=16, num_samples=32)
    runs = []
    for mode in ("kd", "rkd-d"):
        cfg = load_config(
            None,
            [
                f"output_dir={tmp_path / mode}",
                "method.name=ibot",
                f"method.distill.mode={mode}",
                "model.depth=1",
                "method.out_dim=32",
                "method.hidden_dim=32",
                "method.bottleneck_dim=16",
                "train.batch_size=8",
                "train.epochs=1",
                "train.log_every=1",
                "device=cpu",
                "data.name=synthetic",
                "data.img_size=16",
            ],
        )
        Trainer(cfg, data, progress=False).fit()
        runs.append(str(tmp_path / mode))
    out = tmp_path / "curves.png"
    assert main(["plot", "curves", *runs, "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 500
    att = tmp_path / "att.png"
    assert main(["attention", runs[0], "--indices", "0", "1", "--threshold", "0.6", "--out", str(att)]) == 0
    img = Image.open(att)
    assert img.size[0] > 300 and len(set(img.convert("L").tobytes())) > 10
    assert main(["plot", "curves", str(tmp_path / "missing"), "--out", str(out)]) == 1
    capsys.readouterr()
    assert main(["plot", "curves", *runs, "--labels", "only-one", "--out", str(out)]) == 1
    assert "1 labels for 2 runs" in capsys.readouterr().err
    assert main(["attention", runs[0], "--indices", "0", "5000", "--out", str(att)]) == 1  # not wrapped round
    assert all(json.loads(line) for line in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines())
    with open(tmp_path / "kd" / "metrics.jsonl", "a") as f:  # a run killed mid-write: a torn last record
        f.write('{"step": 99, "loss": 1.')
    with pytest.warns(UserWarning, match=r"metrics.jsonl:\d+: skipping a torn record"):
        assert main(["plot", "curves", *runs, "--out", str(out)]) == 0


def tiny_ibot_yaml(path):
    path.write_text(
        "data: {name: synthetic, img_size: 16}\ndevice: cpu\n"
        "model: {backbone: vit_tiny, patch_size: 4, depth: 1}\n"
        "method: {name: ibot, out_dim: 32, hidden_dim: 32, bottleneck_dim: 16, distill: {mode: kd}}\n"
        "train: {epochs: 1, batch_size: 64, log_every: 1}\n"
    )
    return path


def test_experiment_table1_writes_table_curves_and_attention(tmp_path, capsys):
    base = tiny_ibot_yaml(tmp_path / "kd.yaml")
    (tmp_path / "rkd_d.yaml").write_text("_base_: kd.yaml\nmethod: {distill: {mode: rkd-d}}\n")
    out = tmp_path / "t1"
    assert (
        main(
            [
                "experiment",
                "table1",
                "--configs",
                str(base),
                str(tmp_path / "rkd_d.yaml"),
                "--max-steps",
                "3",
                "--linear-epochs",
                "3",
                "--finetune-epochs",
                "1",
                "--eval-train-samples",
                "96",
                "--eval-test-samples",
                "40",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    md = (out / "table1.md").read_text()
    assert "| Random init | 0 |" in md and "| iBOT & KD | 3 |" in md and "| iBOT & RKD-D | 3 |" in md
    assert "Fine-tune Acc@1" in md.splitlines()[2]
    import csv

    rows = list(csv.DictReader((out / "table1.csv").read_text().splitlines()))
    assert len(rows) == 3 and all(r["eval_train"] == "96" and r["eval_test"] == "40" for r in rows)
    assert all(0 <= float(r["finetune_top1"]) <= float(r["finetune_top5"]) <= 100 for r in rows)
    assert (out / "curves.png").stat().st_size > 10000
    assert (out / "attention_rkd_d.png").stat().st_size > 5000


def test_curves_keep_per_model_diagnostics_out_of_the_loss_panel():
    from sslkd.eval.curves import is_diagnostic

    assert all(
        is_diagnostic(k) for k in ("agreement", "agreement2", "teacher_entropy1", "effective_rank2", "cosine_to_fused")
    )
    assert not any(is_diagnostic(k) for k in ("loss", "sm1", "ct2", "rkd_cls", "patch", "tfd", "sfd"))


def test_compare_gives_configs_with_the_same_stem_their_own_run_folders():
    import pytest

    from sslkd.experiments.compare import run_names

    assert run_names(["configs/mocov3/cifar10_vit_tiny.yaml", "configs/mae/cifar10_vit_tiny.yaml", "x/a.yaml"]) == [
        "mocov3_cifar10_vit_tiny",
        "mae_cifar10_vit_tiny",
        "a",
    ]
    with pytest.raises(ValueError, match="share a run folder"):
        run_names(["a/b.yaml", "a/b.yaml"])


def test_an_interrupted_run_stops_the_experiment(tmp_path, capsys, monkeypatch):
    """Ctrl-C during one run of an experiment stops there (resumable), not evaluating the stopped
    run and training the next one."""
    from sslkd.train import Trainer

    cfg = tiny_ibot_yaml(tmp_path / "kd.yaml")
    (tmp_path / "kd2.yaml").write_text("_base_: kd.yaml\n")
    calls = []
    monkeypatch.setattr(
        Trainer,
        "fit",
        lambda self, resume=None: calls.append(1) or {"status": "interrupted", "step": 1, "train_seconds": 0.5},
    )
    assert (
        main(
            [
                "experiment",
                "compare",
                "--configs",
                str(cfg),
                str(tmp_path / "kd2.yaml"),
                "--name",
                "x",
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
                "--eval-train-samples",
                "32",
                "--eval-test-samples",
                "16",
            ]
        )
        == 1
    )
    assert "interrupted at step 1" in capsys.readouterr().err and len(calls) == 1
    assert not (tmp_path / "out" / "x.md").exists()


def test_compare_names_the_config_a_shared_override_does_not_fit(tmp_path, capsys):
    ibot = tiny_ibot_yaml(tmp_path / "ibot.yaml")
    (tmp_path / "dino.yaml").write_text("_base_: ibot.yaml\nmethod: {name: dino, distill: null}\n")
    assert (
        main(
            [
                "experiment",
                "compare",
                "--configs",
                str(ibot),
                str(tmp_path / "dino.yaml"),
                "--set",
                "method.distill.mode=rkd-a",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "dino.yaml: override 'method.distill.mode=rkd-a'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing created before every config is valid


def test_tsne_names_the_valid_classes(tmp_path):
    from sslkd.eval.analysis import plot_tsne

    with pytest.raises(ValueError, match=r"--classes 99: the dataset has classes 0..9"):
        plot_tsne(torch.randn(20, 4), torch.arange(20) % 10, tmp_path / "t.png", [1, 99], [str(i) for i in range(10)])
