#!/usr/bin/env bash
# Issue 28, Part 2: sslkd's engine against lightly's, iBOT & KD under each recipe (sslkd's, lightly's
# example's), learning rates x0.5 / x1 / x2, SEEDS seeds, MINUTES of training a run, one run at a
# time (run nothing else heavy beside it: each run plans its schedules from its measured step rate).
# The x1 runs of every engine and recipe come first, then the sweep. A run whose result JSON exists
# in RESULTS is skipped, so the matrix (24 runs x 30 min at the defaults) can be spread over several
# sittings: commit RESULTS between them. Then: python benchmarks/peer_engines.py table.
#
#   bash benchmarks/peer_engines.sh
#   SCALES="1" SEEDS=2 bash benchmarks/peer_engines.sh        # the x1 rows only (8 runs)
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
MINUTES=${MINUTES:-30}
SEEDS=${SEEDS:-2}
SCALES=${SCALES:-1 0.5 2}
RESULTS=${RESULTS:-benchmarks/results/peer_engines}
RUNS=${RUNS:-runs/peer_engines}
EXTRA=(${EXTRA:-})  # e.g. EXTRA="--eval-train 40 --linear-epochs 2" for a smoke run
for scale in $SCALES; do
  for ((seed = 0; seed < SEEDS; seed++)); do
    for recipe in sslkd lightly; do
      for engine in sslkd lightly; do
        python benchmarks/peer_engines.py run --engine "$engine" --recipe "$recipe" --lr-scale "$scale" \
          --seed "$seed" --minutes "$MINUTES" --root "$DATA" --runs "$RUNS" --results "$RESULTS" "${EXTRA[@]}"
      done
    done
  done
done
python benchmarks/peer_engines.py table --results "$RESULTS" | tee "$RESULTS.md"
