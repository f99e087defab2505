#!/usr/bin/env bash
# The CPU teachers of issue 29's distillation experiments (SEED, DMT): the strongest each recipe makes
# in about an hour of this machine's training, trained once and reused (runs/teachers/<config stem>).
#   1. iBOT & KD, ViT-Tiny/8 on CIFAR-10 (Table 1's KD recipe) - SEED's teacher, DMT's first;
#   2. iBOT & RKD-D, the same recipe - DMT's second teacher of comparable strength;
#   3. MoCo v3, ResNet-18 (small stem) on CIFAR-10 - a teacher of the other family.
# The Table 1 recipe runs on all the images, train.epochs only an upper bound (10, warm-up 5% of it).
# Each run plans every schedule into MINUTES of training (--minutes: the step rate is measured, so run
# nothing else heavy beside it) and is scored by kNN (best of k = 10, 20, 100, 200), a linear probe (rate
# swept on held-out training images) and a logistic regression, learnt on EVAL_TRAIN training images and
# scored on the full 10,000-image test split. Interrupted, the same command
# resumes (finished teachers are neither retrained nor rescored). Table: runs/teachers/teachers.md|json.
#
#   bash benchmarks/teachers.sh                        # all three, 60 min each (~3.5 h with evaluation)
#   CONFIGS="configs/ibot/cifar10_vit_tiny_kd.yaml" bash benchmarks/teachers.sh   # one of them
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-runs/teachers}
MINUTES=${MINUTES:-60}
EVAL_TRAIN=${EVAL_TRAIN:-10000}
CONFIGS=${CONFIGS:-configs/ibot/cifar10_vit_tiny_kd.yaml configs/ibot/cifar10_vit_tiny_rkd_d.yaml configs/mocov3/cifar10_resnet18.yaml}
# shellcheck disable=SC2086
sslkd experiment compare --name teachers --configs $CONFIGS --out "$OUT" --minutes "$MINUTES" \
  --set data.root="$DATA" --set data.subset_fraction=1.0 --set train.epochs=10 --set train.warmup_epochs=0.5 \
  --eval-train-samples "$EVAL_TRAIN" --eval-test-samples 10000 --linear-epochs 100 --protocols linear,knn,logreg \
  --no-progress
