#!/usr/bin/env bash
# MOKD before / after the issue-28 fidelity fixes (benchmarks/results/mokd_fidelity_cpu.*): Table 7's
# row 4 at one budget (10% of CIFAR-10 at 16 px, one epoch), seeds 0 and 1, the code and configs of
# commit 0c69f73 (a git worktree) against the checkout. ~7 min a run alone on 2 AVX2 cores.
#   DATA=../shared/data/cifar10 OUT=runs/mokd_ba bash benchmarks/mokd_before_after.sh
set -euxo pipefail
DATA=$(readlink -f "${DATA:-../shared/data/cifar10}")
OUT=$(readlink -f "${OUT:-runs/mokd_ba}")
BEFORE=${BEFORE:-/tmp/sslkd_before}
[ -d "$BEFORE" ] || git worktree add "$BEFORE" 0c69f73
COMMON=(--epochs 1 --set data.subset_fraction=0.1 --set data.img_size=16 --set aug.local_crops_size=8
  --set method.out_dim=1024 --set method.hidden_dim=512 --set train.batch_size=64 --set train.warmup_epochs=0.1
  --set train.momentum_teacher=0.99 --set train.freeze_last_layer=0 --set data.augment_on=device
  --set data.num_workers=0 --set method.warmup_teacher_temp_epochs=0.3 --set data.root="$DATA"
  --eval-train-samples 10000 --eval-test-samples 2000 --no-progress)
for s in 0 1; do  # the old harness has no --seeds
  (cd "$BEFORE" && PYTHONPATH="$BEFORE/src" python -m sslkd experiment compare --name "mokd_before_s$s" \
    --configs configs/mokd/table7/4_all.yaml "${COMMON[@]}" --set seed=$s --out "$OUT/before_s$s")
done
python -m sslkd experiment compare --name mokd_after --configs configs/mokd/table7/4_all.yaml "${COMMON[@]}" \
  --seeds 0,1 --out "$OUT/after"
