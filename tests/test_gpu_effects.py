"""The prepared GPU script of the four effects runs end to end on the CPU with two steps a run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def class_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.slow
def test_gpu_effects_script_runs_every_experiment_with_two_seeds(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "DATA": str(class_tree(tmp_path / "data")), "OUT": str(out)}
    env["SSLKD"] = str(Path(sys.executable).parent / "sslkd")
    run = subprocess.run(["bash", "benchmarks/gpu_effects.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("table1/table1", "seed_distilled/seed", "seed_alone/alone", "mokd/table7", "dmt_two/two_teachers"):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["seeds"] == [0, 1] and all(s["seeds"] == [0, 1] for s in record["summary"]), name
    assert (out / "mokd" / "attention_distance.png").stat().st_size > 5000
    assert "== dmt_one/best_teacher" in run.stdout
