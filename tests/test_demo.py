import json

import pytest

from sslkd.demo import run_demo


def _check(tmp_path, capsys, overrides, margin):
    table = run_demo(str(tmp_path / "demo"), overrides, progress=False)
    out = capsys.readouterr().out
    assert "DINO pretrained" in out and "random init" in out
    assert table["DINO pretrained"]["top1"] >= table["random init"]["top1"] + margin, table
    rec = [
        json.loads(line) for line in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
    ]
    assert sum(r["loss"] for r in rec[-5:]) / 5 < sum(r["loss"] for r in rec[2:7]) / 5
    assert (tmp_path / "demo" / f"checkpoint-{rec[-1]['step']}.pt").is_file()


def test_half_length_demo_beats_random_init_by_ten_points(tmp_path, capsys):
    """The README's demo at half its length (~70 s on 2 cores; kNN 70.5 vs 52.4 at random init):
    DINO on digits, loss falls, kNN rises."""
    _check(tmp_path, capsys, ["train.epochs=6", "train.warmup_epochs=1"], 10)


@pytest.mark.slow
def test_demo_pretraining_beats_random_init_by_twenty_points(tmp_path, capsys):
    """The README's demo as it ships (~2 min on 2 cores; kNN 85.2 vs 52.4)."""
    _check(tmp_path, capsys, [], 20)
