"""Several seeds per row of an experiment: folders, mean and spread, resuming without redoing."""

import csv
import json

import pytest

from sslkd.cli import main
from sslkd.experiments.seeds import parse_seeds, summarize, verdict


def test_parse_seeds_takes_a_count_or_a_list_and_names_bad_values():
    assert parse_seeds(None) is None and parse_seeds("") is None
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,1,5") == [0, 1, 5]
    for bad in ("0", "a", "1,1", "-1,2"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_summary_statistics_and_verdict():
    rows = [
        {"pretrain": "A", "seed": s, "steps": 5, "linear_top1": v, "knn_top1": v - 1}
        for s, v in zip((0, 1, 2), (40.0, 42.0, 44.0))
    ] + [{"pretrain": "B", "seed": s, "steps": 5, "linear_top1": v, "knn_top1": v} for s, v in ((0, 50.0), (1, 51.0))]
    a, b = summarize(rows)
    assert a["seeds"] == [0, 1, 2] and a["linear_top1_mean"] == 42.0 and a["linear_top1_std"] == pytest.approx(2.0)
    assert (a["linear_top1_min"], a["linear_top1_max"], a["linear_top1_all"]) == (40.0, 44.0, [40.0, 42.0, 44.0])
    assert verdict(a, b, "linear_top1") == "resolved"  # 8.5 apart, std 2 + 0.7, ranges apart
    close = summarize([{**r, "linear_top1": r["linear_top1"] - 7} if r["pretrain"] == "B" else r for r in rows])
    assert verdict(close[0], close[1], "linear_top1") == "not resolved"  # 43.5 vs 42: ranges overlap
    one = summarize(rows[:1] + rows[3:4])
    assert verdict(one[0], one[1], "linear_top1").startswith("not resolved (one seed)")


def _tiny(path, mode):
    path.write_text(
        "data: {name: synthetic, img_size: 16}\ndevice: cpu\n"
        "model: {backbone: vit_tiny, patch_size: 4, depth: 1}\n"
        f"method: {{name: ibot, out_dim: 32, hidden_dim: 32, bottleneck_dim: 16, distill: {{mode: {mode}}}}}\n"
        "train: {epochs: 1, batch_size: 32, log_every: 1}\n"
    )
    return str(path)


def test_compare_with_seeds_tabulates_spread_and_resumes_without_redoing(tmp_path, monkeypatch):
    configs = [_tiny(tmp_path / "kd.yaml", "kd"), _tiny(tmp_path / "rkd_d.yaml", "rkd-d")]
    out = tmp_path / "exp"
    argv = ["experiment", "compare", "--configs", *configs, "--seeds", "2", "--max-steps", "2", "--random-init"]
    argv += ["--linear-epochs", "2", "--eval-train-samples", "64", "--eval-test-samples", "32"]
    argv += ["--out", str(out), "--no-progress", "--name", "cmp", "--protocols", "linear,knn,logreg"]
    assert main(argv) == 0
    for row in ("kd", "rkd_d"):  # each row's seeds in their own folders, seeded
        for s in (0, 1):
            cfg = (out / row / f"seed{s}" / "config.yaml").read_text()
            assert f"seed: {s}\n" in cfg and (out / row / f"seed{s}" / "compare_scores.json").is_file()
    record = json.loads((out / "cmp.json").read_text())
    assert record["seeds"] == [0, 1] and "torch" in record["environment"]
    assert [s["pretrain"] for s in record["summary"]] == ["Random init", "iBOT & KD", "iBOT & RKD-D"]
    assert all(s["seeds"] == [0, 1] and len(s["knn_top1_all"]) == 2 for s in record["summary"])
    assert all(len(s["logreg_top1_all"]) == 2 for s in record["summary"])  # every protocol asked for
    rows = list(csv.DictReader((out / "cmp.csv").read_text().splitlines()))
    assert [(r["pretrain"], r["seed"]) for r in rows][:3] == [
        ("Random init", "0"),
        ("Random init", "1"),
        ("iBOT & KD", "0"),
    ]
    md = (out / "cmp.md").read_text()
    assert "mean ± std (min-max) | per seed" in md and "| iBOT & KD | 0,1 | 2 |" in md and "Every run:" in md
    assert "LogReg Acc@1: mean" in md and "| LogReg Acc@1 | Acc@5 | C |" in md and "logreg_C" in rows[0]
    assert (out / "curves.png").stat().st_size > 10000
    # run again: nothing is trained or evaluated twice
    from sslkd.experiments import compare

    def refuse(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(compare.Scorer, "scores", refuse)
    before = (out / "kd" / "seed1" / "metrics.jsonl").read_text()
    assert main(argv) == 0
    assert (out / "kd" / "seed1" / "metrics.jsonl").read_text() == before
    assert json.loads((out / "cmp.json").read_text())["rows"] == record["rows"]


def test_compare_names_an_unknown_protocol_before_any_training(tmp_path, capsys):
    out = tmp_path / "exp"
    argv = ["experiment", "compare", "--configs", _tiny(tmp_path / "kd.yaml", "kd"), "--protocols", "knn,svm"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2  # a config error
    assert "unknown protocol 'svm'; available: knn" in capsys.readouterr().err and not out.exists()
