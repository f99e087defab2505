#!/usr/bin/env bash
# The GPU figures of the README in one call on a CUDA machine that already has torch + timm
# (sslkd from src/, lightly from carried wheels in .whl/). Results land in $OUT (default: runs/gpu).
set -uo pipefail
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m sslkd info 2>&1 | head -12
run() { local name=$1; shift; echo "== $name: $*"; timeout "$T" "$@" 2>&1 | grep -v -i warn | tee "$OUT/$name.json" | tail -c 3000; }
# the GPU configuration: iBOT ViT-Small/4, 32 px, 2 + 6 crops (16 px), out_dim 8192, bf16
T=150 run peer_vits_b256 python3 benchmarks/peer_lightly_ibot.py --backbone vit_small --batch 256 --precision bf16 --device cuda --steps 10 --set data.num_workers=12
T=120 run bench_vits_b1024 python3 -m sslkd bench --backbone vit_small --batch 1024 --precision bf16 --steps 10 --workers 14
T=90 run peer_vitt_b64 python3 benchmarks/peer_lightly_ibot.py --backbone vit_tiny --batch 64 --precision fp32 --device cuda --steps 10 --set data.num_workers=4
echo "== demo on cuda"; timeout 100 python3 -m sslkd demo --output-dir "$OUT/demo" --no-progress 2>&1 | grep -v -i warn | tail -8
T=170 run bench_vits_b1024_compile python3 -m sslkd bench --backbone vit_small --batch 1024 --precision bf16 --steps 10 --workers 14 --compile
