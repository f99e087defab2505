#!/usr/bin/env bash
# The four papers' effects on one GPU, two seeds a row, about 10 minutes on one H100 (issue 29, item 5):
#   1. masked relational KD, Table 1: iBOT & KD vs & RKD-D vs & RKD-A (ViT-Tiny/8, CIFAR-10);
#   2. SEED: a ResNet-18 distilled from Table 1's iBOT & KD teacher vs the same student trained alone
#      (DINO, MoCo v3) for the same time;
#   3. MOKD: ResNet-18 + ViT-Tiny learning from each other vs trained independently (Table 7's first and
#      last rows), with the ViT's mean attention distance per layer;
#   4. DMT: a student from two Table 1 teachers vs from the better one alone.
# Every run plans its schedules to end at its time budget (--minutes) and every table gives each row's
# mean ± std over the seeds (sslkd experiment compare --seeds). Results: $OUT/*/*.md|json, curves.png.
#
#   DATA=/path/to/cifar10 bash benchmarks/gpu_effects.sh          # all four (OUT=runs/gpu_effects)
#   DATA=... PARTS="table1 seed" bash benchmarks/gpu_effects.sh   # some of them (table1 first: it makes the teachers)
#   SMOKE=1 DATA=tiny_tree bash benchmarks/gpu_effects.sh         # a few steps each on the CPU (tests/test_gpu_effects.py)
# DATA is a CIFAR-10 image-folder tree (train/<class>/, test/<class>/); a device that caps one command at
# 10 minutes runs it in two calls (PARTS="table1 seed", then PARTS="mokd dmt": finished runs are not redone).
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-runs/gpu_effects}
SSLKD=${SSLKD:-sslkd}
if [ "${SMOKE:-0}" = 1 ]; then  # the CPU test: two steps a run, tiny evaluations
  T1=(--max-steps 2); T2=(--max-steps 2); T3=(--max-steps 2); T4=(--max-steps 2)
  EVAL=(--eval-train-samples 40 --eval-test-samples 20 --linear-epochs 2)
  DEV=cpu; HW=(--set train.batch_size=8 --set data.num_workers=0)
else  # minutes of training a run: 6 + 6 + 4 + 4 runs, ~7 min of training and ~3 of evaluation on an H100
  T1=(--minutes 0.4); T2=(--minutes 0.25); T3=(--minutes 0.4); T4=(--minutes 0.25)
  EVAL=(--eval-train-samples 10000 --eval-test-samples 5000 --linear-epochs 30)
  DEV=cuda; HW=(--set train.batch_size=256 --set data.num_workers=8)
fi
PARTS=${PARTS:-table1 seed mokd dmt}
part() { [[ " $PARTS " == *" $1 "* ]]; }
COMMON=(--seeds 2 --no-progress --set data.root="$DATA" --set device=$DEV "${HW[@]}" "${EVAL[@]}")

# 1. Table 1 (its iBOT & KD and & RKD-A seed-0 runs are the teachers of 2 and 4)
part table1 && "$SSLKD" experiment table1 --out "$OUT/table1" "${T1[@]}" "${COMMON[@]}"
KD="$OUT/table1/cifar10_vit_tiny_kd/seed0"
RKD_A="$OUT/table1/cifar10_vit_tiny_rkd_a/seed0"

# 2. SEED against the same student trained alone, at equal student time
part seed && "$SSLKD" experiment compare --name seed --out "$OUT/seed_distilled" "${T2[@]}" "${COMMON[@]}" \
  --configs configs/seed/cifar10_resnet18_from_ibot_vit_tiny.yaml --set method.teacher="$KD" --random-init
part seed && "$SSLKD" experiment compare --name alone --out "$OUT/seed_alone" "${T2[@]}" "${COMMON[@]}" \
  --configs configs/dino/cifar10_resnet18.yaml configs/mocov3/cifar10_resnet18.yaml

# 3. MOKD against the two models trained independently (Table 7's L_sm row), same total time
part mokd && "$SSLKD" experiment compare --name table7 --out "$OUT/mokd" "${T3[@]}" "${COMMON[@]}" \
  --configs configs/mokd/table7/1_sm.yaml configs/mokd/table7/4_all.yaml
part mokd && "$SSLKD" analyze attention-distance "$OUT/mokd/1_sm/seed0@2" "$OUT/mokd/4_all/seed0@2" --device $DEV \
  --root "$DATA" --out "$OUT/mokd/attention_distance.png"

# 4. DMT from two teachers against the better single one (by Table 1's kNN), same student time
if part dmt; then
  BEST=$(python3 - "$OUT/table1/table1.json" "$KD" "$RKD_A" <<'PY'
import json, sys
summary = {s["pretrain"]: s["knn_top1_mean"] for s in json.load(open(sys.argv[1]))["summary"]}
print(sys.argv[2] if summary["iBOT & KD"] >= summary["iBOT & RKD-A"] else sys.argv[3])
PY
  )
  "$SSLKD" experiment compare --name two_teachers --out "$OUT/dmt_two" "${T4[@]}" "${COMMON[@]}" \
    --configs configs/dmt/cifar10_vit_tiny_from_table1.yaml --set "method.teachers=[$KD,$RKD_A]"
  "$SSLKD" experiment compare --name best_teacher --out "$OUT/dmt_one" "${T4[@]}" "${COMMON[@]}" \
    --configs configs/dmt/cifar10_vit_tiny_from_table1.yaml --set "method.teachers=[$BEST]"
fi

for f in table1/table1 seed_distilled/seed seed_alone/alone mokd/table7 dmt_two/two_teachers dmt_one/best_teacher; do
  [ -f "$OUT/$f.md" ] && { echo "== $f"; cat "$OUT/$f.md"; }
done
true
