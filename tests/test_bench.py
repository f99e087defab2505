"""`sslkd bench`: the figures it prints are consistent with each other and with the step it times."""

import json
import platform
import subprocess
import sys

import pytest

from sslkd.bench import BenchArgs, run_bench
from sslkd.cli import main


def test_bench_figures_are_consistent():
    a = BenchArgs(batch=8, img=16, patch=8, local_crops=2, local_img=8, out_dim=64, steps=2, data_batches=2)
    r = run_bench(a, ["model.depth=1", "method.hidden_dim=32", "method.bottleneck_dim=16", "data.num_workers=0"])
    assert abs(r["img_per_s"] - a.batch / r["step_s"]) / r["img_per_s"] < 0.02
    assert set(r["split_s"]) == {"forward", "backward", "optimizer", "ema"} and all(
        v >= 0 for v in r["split_s"].values()
    )
    assert r["gflop_per_img"] > 0 and r["matmul_peak_gflops"]["fp32"] > 0
    assert abs(r["achieved_gflops"] - r["gflop_per_img"] * r["img_per_s"]) / r["achieved_gflops"] < 0.02
    assert 0 < r["peak_fraction"] < 2  # a tiny model: far below the peak, never far above
    assert r["data_img_per_s"] > 0 and r["config"]["autocast"] == "fp32"


def test_bench_flops_grow_with_local_crops():
    base = dict(batch=4, img=16, patch=8, local_img=8, out_dim=64, steps=1, data_batches=1)
    extra = ["model.depth=1", "method.hidden_dim=32", "method.bottleneck_dim=16", "data.num_workers=0"]
    f0 = run_bench(BenchArgs(local_crops=0, **base), extra)["gflop_per_img"]
    f4 = run_bench(BenchArgs(local_crops=4, **base), extra)["gflop_per_img"]
    assert f4 > f0


def test_bench_cli_prints_one_json_line(capsys):
    assert (
        main(
            [
                "bench",
                "--method",
                "dino",
                "--batch",
                "4",
                "--img",
                "16",
                "--patch",
                "8",
                "--local-crops",
                "0",
                "--out-dim",
                "32",
                "--steps",
                "1",
                "--data-batches",
                "1",
                "--set",
                "model.depth=1",
                "--set",
                "data.num_workers=0",
                "--set",
                "method.hidden_dim=32",
            ]
        )
        == 0
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["config"]["method"] == "dino"


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_malloc_recycles_pages_of_large_temporaries():
    # a fresh process (this one's malloc may be tuned already): a 40 MB temporary page-faults on
    # every allocation by default (glibc mmaps it), and reuses warm pages once tuned
    code = """
import resource, torch
from sslkd.device import tune_cpu_malloc
x = torch.randn(1233, 8192)
def faults():
    for _ in range(10):  # the heap grows to the working set first
        x / 0.1
    rounds = []  # the fewest faults of several rounds: the kernel may reclaim idle pages meanwhile
    for _ in range(4):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            x / 0.1
        rounds.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 5)
    return min(rounds)
before = faults()
print(before, tune_cpu_malloc(), tune_cpu_malloc(), faults())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, first, again, after = float(out[0]), out[1], out[2], float(out[3])
    assert before > 5000  # 40 MB = 9,800 pages
    assert first == again == "True"
    assert after < 0.05 * before
