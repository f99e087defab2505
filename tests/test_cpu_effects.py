"""The CPU script of SEED's, DMT's and MOKD's effects runs end to end with two steps a run, from
teachers made the way benchmarks/teachers.sh makes them (two steps each here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_gpu_effects import class_tree

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_effects_script_runs_every_part_with_two_seeds(tmp_path):
    data, teachers, out = class_tree(tmp_path / "data"), tmp_path / "teachers", tmp_path / "out"
    sslkd = str(Path(sys.executable).parent / "sslkd")
    for mode in ("kd", "rkd_d"):
        args = [
            sslkd,
            "pretrain",
            "--config",
            f"ibot/cifar10_vit_tiny_{mode}",
            "--out",
            str(teachers / f"cifar10_vit_tiny_{mode}"),
        ]
        for key in ("train.max_steps=2", "train.batch_size=8", "data.num_workers=0", "device=cpu", f"data.root={data}"):
            args += ["--set", key]
        assert subprocess.run([*args, "--no-progress"], cwd=ROOT, capture_output=True).returncode == 0, mode
    rows = [{"pretrain": "iBOT & KD", "knn_top1": 20.0}, {"pretrain": "iBOT & RKD-D", "knn_top1": 25.0}]
    (teachers / "teachers.json").write_text(json.dumps({"rows": rows}))
    env = {**os.environ, "SMOKE": "1", "DATA": str(data), "TEACHERS": str(teachers), "OUT": str(out), "SSLKD": sslkd}
    run = subprocess.run(["bash", "benchmarks/cpu_effects.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("seed_resnet18/seed", "seed_mobilenetv3/seed", "alone_resnet18/alone", "alone_mobilenetv3/alone",
                 "dmt_two/two_teachers", "dmt_one/best_teacher", "mokd/table7"):  # fmt: skip
        record = json.loads((out / f"{name}.json").read_text())
        assert record["seeds"] == [0, 1] and all(s["seeds"] == [0, 1] for s in record["summary"]), name
    one = json.loads((out / "dmt_one" / "best_teacher.json").read_text())
    assert "cifar10_vit_tiny_rkd_d" in json.dumps(one["overrides"])  # the better teacher by kNN
    assert (out / "mokd" / "attention_distance.png").stat().st_size > 5000
