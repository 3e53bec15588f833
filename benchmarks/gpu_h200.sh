#!/usr/bin/env bash
# One call on the lent 1-GPU H200 machine: fused-kernel check + the single-GPU overhead benchmark.
#   (device tool) run: bash benchmarks/gpu_h200.sh      -> results under $OUT
# Needs: torch + transformers + triton there (preinstalled); eavss from this tree via PYTHONPATH=src.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/eavss_gpu_out}; mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c 'import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__, torch.cuda.get_device_name())'
  nproc; } 2>&1 | tee "$OUT/env.txt"
timeout 150 python3 benchmarks/check_fused.py --out "$OUT/fused.json" 2>&1 | tee "$OUT/fused.log"
timeout 400 python3 benchmarks/stats_overhead.py --model shape:llama3-8b --dtype bfloat16 --device cuda \
  --batch-size 8 --seq-len 2048 --num-batches 8 --repeats 5 --warmup 1 \
  --variants plain,eavss,eavss_eager,simple,official,hidden_states,bi_matrix,bi_rowwise \
  --out "$OUT/h200_llama3-8b_bf16.json" 2>&1 | tee "$OUT/overhead.log"
