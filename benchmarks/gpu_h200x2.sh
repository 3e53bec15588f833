#!/usr/bin/env bash
# One call on the lent 2-GPU H200 machine (device tool: run, kind nvidia-h200-x2):
#   1. fused-kernel correctness (incl. the in-place grouped accumulation) and kernel device times;
#   2. data-parallel speed-up 1 -> 2 GPUs (torchrun, NCCL, NVLS off) and equality of the sums;
#   3. device_map="auto" split over both GPUs vs. one GPU;
#   4. the single-GPU overhead benchmark (GPU 0), Llama-3-8B shape, bf16, 64 x 2048 tokens, with the
#      kernel configuration that step 1 measured fastest (EAVSS_TRITON_CONFIG; recorded in the JSON).
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/eavss_gpu_out}; mkdir -p "$OUT"
{ nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; nvidia-smi topo -m
  python3 -c 'import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__, torch.cuda.device_count())'
  nproc; } > "$OUT/env.txt" 2>&1
{
timeout 100 python3 benchmarks/check_fused.py --out "$OUT/fused.json"
CUDA_VISIBLE_DEVICES=0 timeout 60 python3 benchmarks/profile_fused.py --out "$OUT/profile.json" --best-config-file /tmp/best_cfg
echo "best config: '$(cat /tmp/best_cfg 2>/dev/null)' (empty = default)"
timeout 80 torchrun --nproc_per_node=1 benchmarks/multi_gpu.py speed --num-batches 16 --out /tmp/mg1.json
timeout 80 torchrun --nproc_per_node=2 benchmarks/multi_gpu.py speed --num-batches 16 --out /tmp/mg2.json
python3 benchmarks/multi_gpu.py compare /tmp/mg1.json /tmp/mg2.json --out "$OUT/speedup.json"
timeout 90 python3 benchmarks/multi_gpu.py device-map --out "$OUT/devmap.json"
} 2>&1 | grep -v "^\[W\|Warning" | tee "$OUT/check_multi.log"
BEST=$(cat /tmp/best_cfg 2>/dev/null); [ -n "$BEST" ] && export EAVSS_TRITON_CONFIG=$BEST
CUDA_VISIBLE_DEVICES=0 timeout 270 python3 benchmarks/stats_overhead.py --model shape:llama3-8b --dtype bfloat16 \
  --device cuda --batch-size 8 --seq-len 2048 --num-batches 8 --repeats 4 --warmup 1 \
  --variants plain,eavss,simple,official,hidden_states,bi_matrix,bi_rowwise \
  --out "$OUT/h200_llama3-8b_bf16.json" > "$OUT/overhead.log" 2>&1
tail -12 "$OUT/overhead.log"
