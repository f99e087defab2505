import json
import subprocess
import sys

import pytest

from sslkd.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sslkd", *args], capture_output=True, text=True, timeout=300)


def test_unknown_config_key_exits_2_with_suggestion(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  batch_sise: 8\n")
    assert main(["pretrain", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "train.batch_sise" in err and "batch_size" in err and "Traceback" not in err


def test_missing_config_and_dataset_are_sentences(tmp_path, capsys):
    assert main(["pretrain", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  name: imagefolder\n  root: {tmp_path / 'no_images'}\n")
    assert main(["pretrain", "--config", str(cfg)]) == 1
    assert "no_images" in capsys.readouterr().err
    assert main(["eval", "knn", "--checkpoint", str(tmp_path / "x.pt"), "--dataset", "digits"]) == 1
    assert "x.pt" in capsys.readouterr().err


def test_pretrain_then_eval_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data: {name: digits, img_size: 16}\n"
        "model: {backbone: vit_tiny, patch_size: 4, depth: 1}\n"
        "method: {name: dino, out_dim: 64, hidden_dim: 64, bottleneck_dim: 32}\n"
        f"train: {{epochs: 1, batch_size: 64, max_steps: 2}}\noutput_dir: {out}\ndevice: cpu\n"
    )
    # the console entry point itself, once, in a fresh interpreter
    r = run_cli("pretrain", "--config", str(cfg), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 2
    assert (out / "checkpoint-2.pt").is_file() and (out / "metrics.jsonl").is_file()
    assert any((out / "tb").iterdir())
    assert main(["eval", "knn", "--checkpoint", str(out), "--dataset", "digits", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 < res["top1"] <= res["top5"] <= 100
    assert (
        main(["eval", "linear", "--random-init", "--dataset", "digits", "--backbone", "vit_tiny", "--epochs", "5"]) == 0
    )
    assert "top-1" in capsys.readouterr().out
    # a checkpoint for 1-channel images evaluated on 3-channel data is refused
    assert main(["eval", "knn", "--checkpoint", str(out), "--dataset", "synthetic"]) == 1
    assert "channels" in capsys.readouterr().err
    assert main(["eval", "knn", "--checkpoint", str(out), "--dataset", "digits", "--img-size", "18"]) == 1
    assert "not a multiple of the ViT's patch size 4" in capsys.readouterr().err


def test_info_lists_registry(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "dino" in out and "vit_tiny" in out and "fashion-mnist" in out


def test_budget_spec_maps_to_the_config_keys(capsys):
    from sslkd.experiments.compare import budget_overrides

    assert budget_overrides("1epochs,20min") == ["train.epochs=1", "train.time_budget_minutes=20.0"]
    assert budget_overrides("500steps") == ["train.max_steps=500"]
    assert budget_overrides("2ep, 1.5min") == ["train.epochs=2", "train.time_budget_minutes=1.5"]
    for bad in ("20", "1.5steps", "10hours", "-3min", "abcmin"):
        with pytest.raises(ValueError, match="--budget"):
            budget_overrides(bad)
    assert main(["experiment", "table1", "--budget", "10hours", "--out", "/nonexistent/x"]) == 1
    assert "cannot read '10hours'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "knn", "--k", "0"],
        ["eval", "knn", "--temperature", "0"],
        ["eval", "linear", "--epochs", "0"],
        ["eval", "finetune", "--epochs", "-1"],
        ["eval", "knn", "--batch-size", "0"],
        ["attention", "--threshold", "1.5"],
    ],
)
def test_evaluation_refuses_impossible_settings(argv, capsys):
    extra = ["x"] if argv[0] == "attention" else ["--checkpoint", "x", "--dataset", "digits"]
    with pytest.raises(SystemExit) as e:  # argparse: usage error, exit 2, before any work
        main([*argv, *extra])
    assert e.value.code == 2 and "must be" in capsys.readouterr().err


def test_knn_over_several_k_prints_each_and_the_best(capsys):
    """MOKD reports kNN as the best over k in {10, 20, 100, 200}: `--k 10,20,100,200`."""
    args = ["eval", "knn", "--random-init", "--dataset", "digits", "--backbone", "vit_tiny", "--k", "1,20,100"]
    assert main(args + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    tops = {int(k): r["top1"] for k, r in res["per_k"].items()}
    assert set(tops) == {1, 20, 100} and res["top1"] == max(tops.values()) and tops[res["k"]] == res["top1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "k=1: top-1" in out and "k=100: top-1" in out and "best of 1,20,100" in out
    with pytest.raises(SystemExit) as e:  # a usage error naming the value
        main(["eval", "knn", "--random-init", "--dataset", "digits", "--k", "10,0"])
    assert e.value.code == 2 and "k[1]: must be > 0 (got 0)" in capsys.readouterr().err


def test_knn_defaults_to_mokds_k_list_and_says_so(capsys):
    """Without --k: the best of k = 10, 20, 100, 200 (MOKD's protocol, DINO's 20 among them), each
    printed; --help names the list."""
    from sslkd.eval.knn import DEFAULT_KS

    assert main(["eval", "knn", "--random-init", "--dataset", "digits", "--backbone", "vit_tiny", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert tuple(int(k) for k in res["per_k"]) == DEFAULT_KS == (10, 20, 100, 200)
    with pytest.raises(SystemExit):
        main(["eval", "knn", "--help"])
    assert "default: 10,20,100,200" in " ".join(capsys.readouterr().out.split())
