"""The engine-against-engine harness (benchmarks/peer_engines.sh, issue 28 Part 2) runs every
engine under every recipe on a tiny tree, plans each run into its minutes, writes one result a
run with its metadata, skips finished runs, and tabulates them."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("lightly")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_peer_engines_matrix_runs_resumes_and_tabulates(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10)):
        for c in ("cat", "dog"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(a).save(tmp_path / "data" / split / c / f"{i}.png")
    results = tmp_path / "results"
    env = {**os.environ, "DATA": str(tmp_path / "data"), "RESULTS": str(results), "RUNS": str(tmp_path / "runs"),
           "MINUTES": "0.25", "SEEDS": "1", "SCALES": "1", "EXTRA": "--eval-train 40 --linear-epochs 2"}  # fmt: skip
    run = subprocess.run(["bash", "benchmarks/peer_engines.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    records = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}
    assert sorted(records) == [f"{e}_{r}_lr1_seed0" for e in ("lightly", "sslkd") for r in ("lightly", "sslkd")]
    for name, r in records.items():
        assert r["steps"] > 8 and r["plan"]["planned_steps"] == r["planned_steps"], name  # planned, not cut
        assert 0 <= r["knn_top1"] <= 100 and r["environment"]["lightly"] and r["commit"], name
        assert 0 < r["teacher_entropy"] < 10, name  # both engines say how collapsed the teacher is
    assert records["lightly_lightly_lr1_seed0"]["peak_lr"] == pytest.approx(1e-3)  # lightly's example
    assert records["sslkd_sslkd_lr1_seed0"]["peak_lr"] == pytest.approx(2e-3 * 64 / 256)
    table = (tmp_path / "results.md").read_text()
    assert table.count("| sslkd recipe,") == 2 and table.count("| lightly recipe,") == 2
    again = subprocess.run(["bash", "benchmarks/peer_engines.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("not run again") == 4
