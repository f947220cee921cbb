#!/usr/bin/env bash
# The one GPU session of issue 12: the 5 default bench/gpu.py variants (~6 min on an H100/H200, mostly compiling),
# then the head + loss micro-benchmark (~1 min). Everything lands in $OUT; run from the repository root.
set -u
OUT=${OUT:-/tmp/lmtrain-gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/gpu.txt"
timeout "${GPU_BENCH_S:-480}" $PY bench/gpu.py --json "$OUT/gpu.json" 2>"$OUT/gpu.err" | tee -a "$OUT/gpu.txt"
timeout 100 $PY bench/loss_memory.py --device cuda --bf16 --batch 16 --chunks 2048,4096 \
    --json "$OUT/loss_memory.json" 2>>"$OUT/gpu.err" | tee "$OUT/loss_memory.txt"
tail -n 40 "$OUT/gpu.err"
