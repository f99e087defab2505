"""How fast the command line answers ``--help``: ``sslkd --help`` and each command's, median wall
time of ``--repeats`` fresh processes, side by side with ``python -c "import torch"`` (the cost
the help must not pay) measured in the same run.

    python benchmarks/cli_startup.py                  # this checkout
    python benchmarks/cli_startup.py --src OLD/src    # another checkout's sources (before/after)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS = ["", "pretrain", "eval knn", "export", "report", "bench", "info"]


def wall(args: list[str], env: dict, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", help="sources to time instead of the installed sslkd (a checkout's src/)")
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes per command (median)")
    a = ap.parse_args()
    env = dict(os.environ, **({"PYTHONPATH": a.src} if a.src else {}))
    out = {"import_torch_s": round(wall(["-c", "import torch"], env, a.repeats), 3)}
    for cmd in COMMANDS:
        out[f"sslkd {cmd} --help".replace("  ", " ")] = round(
            wall(["-m", "sslkd", *cmd.split(), "--help"], env, a.repeats), 3
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
