#!/usr/bin/env bash
# Issue 10 on one H200 in ONE device call (~8 minutes of script; every step under its own `timeout`
# and a shared budget, so an overrun loses only its own step). Everything lands under $OUT:
#   steps.txt          one line per step: name, exit code, seconds (124/130 = stopped by its time cap)
#   env.txt            GPU, driver, torch/transformers/triton versions
#   fused.json         check_fused.py: fused kernel vs float64 reference, block influence at other sites,
#                      tiny-model collectors GPU vs CPU at resid_post / mlp_act / resid_delta   (correctness)
#   sites_qwen.json    stats_overhead.py, Qwen2.5-7B shape, bf16, 4 right-padded batches of 8 x 2048:
#                      plain vs eavss at resid_post / resid_delta / mlp_act (block influence on and off)
#   sites_llama.json   the same on the Llama-3-8B shape
#   profile_sites.json profile_fused.py: kernel device times per site (mlp_act at 18944 and 14336 wide with
#                      a launch-configuration sweep: whole row split or not, joint reductions or not, warps;
#                      block influence alone; resid_delta formed in the kernel vs the earlier sub + reduction)
#   gen_overhead.json  gen_overhead.py: the analysis's generation with capture (staged, per layer, statistics
#                      only) / without / HF generate, Llama-3-8B shape, batch 8 and 64, 16 new tokens, 9 rounds
#   hphases/phases.json  hallucination_phases.py: `eavss hallucination` by phase, Llama-3-8B shape
#                      (scale $HSCALE of the default limits; needs the kit below)
#   *.log              each step's output
#
# Before the call, on the development machine (repository root):
#   bash benchmarks/device/speed_kit.sh        # -> .dev/speed/kit.tar.xz (QA data + SmolLM2 tokenizer, ~4 MB)
# The call (device tool):  command "bash benchmarks/device/speed.sh", carry [".dev/speed"], kind nvidia-h200
# Knobs (environment): BUDGET (script seconds, default 540), HSCALE (default 0.1), KIT (default .dev/speed/kit.tar.xz),
# GEN_BATCHES (default 8,64), GEN_ROUNDS (default 9), GEN_VARIANTS (default capture,capture_layers,capture_stats,plain,hf),
# GEN_PER (batches per batch size, default 1), CHECK_CAP / GEN_CAP / PROFILE_CAP (those steps' seconds, default 90 / 120 / 70),
# PROFILE_ARGS (more profile_fused.py arguments, e.g. --only-extra),
# SITES (stats_overhead.py variants of the sites steps), STEPS (comma-separated step names to run, default all: check_fused,sites_qwen,sites_llama,profile_sites,gen_overhead,
# hphases), CASES (profile cases), EXTRA_CONFIGS (profile: more launch configurations for the first wide case).
# The results come back as ONE archive, $OUT/speed.tar.gz (a device call returns at most 8 files), plus steps.txt.
# SMOKE=1 (the same wiring on this CPU with tiny models and shapes, to check the script before the call:
#   SMOKE=1 OUT=/tmp/speed_smoke PY=.venv/bin/python bash benchmarks/device/speed.sh)
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export EAVSS_CACHE=/tmp/eavsscache
OUT=${OUT:-/tmp/speed_out}
mkdir -p "$OUT"
BUDGET=${BUDGET:-540}
HSCALE=${HSCALE:-0.1}
KIT=${KIT:-.dev/speed/kit.tar.xz}
PY=${PY:-python3}
if [ "${SMOKE:-0}" = 1 ]; then  # CPU wiring check: tiny models, tiny shapes, one thread
  DEV=cpu; DT=float32; MQ=tiny:qwen2; ML=tiny:llama; MG=tiny:llama; MH=shape:smollm2-135m
  SHAPE="--batch-size 2 --seq-len 32 --num-batches 2 --threads 1"; GEN="--batch-sizes 2,4 --max-new-tokens 4 --threads 1"
  CASES="2x32x300:act,2x32x64:bi,2x32x64:bi_eager,2x32x64:delta,2x32x64:delta_nobi,2x32x64:delta_sub"; HLIM="--limit 2 --threads 1 --set scores.bootstrap=5 --set scores.permutations=5 --set scores.min_per_class=2 --set probe.folds=2"
else
  DEV=cuda; DT=bfloat16; MQ=shape:qwen2.5-7b; ML=shape:llama3-8b; MG=shape:llama3-8b; MH=shape:llama3-8b
  SHAPE="--batch-size 8 --seq-len 2048 --num-batches 4"; GEN="--batch-sizes ${GEN_BATCHES:-8,64} --max-new-tokens 16"
  CASES=${CASES:-8x2048x18944:act,8x2048x14336:act,8x2048x3584:bi,8x2048x4096:bi,8x2048x3584:delta,8x2048x3584:delta_nobi,8x2048x3584:delta_sub,8x2048x4096:delta,8x2048x3584:post}
  HLIM="--scale $HSCALE"
fi

step() {  # step NAME CAP_SECONDS CMD...: run under min(CAP, what is left of BUDGET); SIGINT first, then KILL
  local name=$1 cap=$2; shift 2
  if [ -n "${STEPS:-}" ] && [[ ",$STEPS," != *",$name,"* ]]; then return 0; fi  # STEPS=a,b: only those steps
  local left=$((BUDGET - SECONDS - 3)) t0=$SECONDS rc
  local lim=$(( cap < left ? cap : left ))
  if [ "$lim" -lt 20 ]; then
    echo "== $name skipped: ${left}s of the budget left" | tee -a "$OUT/steps.txt"; return 0
  fi
  timeout --signal=INT --kill-after=15 "$lim" "$@" > "$OUT/$name.log" 2>&1; rc=$?
  echo "== $name rc=$rc $((SECONDS - t0))s (cap ${lim}s)" | tee -a "$OUT/steps.txt"
  tail -n 4 "$OUT/$name.log" | cut -c1-240
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  $PY -c 'import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__, torch.cuda.get_device_name())'
  nproc; git log -1 --format='%H %s' 2>/dev/null; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. correctness first: the fused kernel, the fused block influence of the other sites, whole collectors
if [ "$DEV" = cuda ]; then
  step check_fused ${CHECK_CAP:-90} $PY benchmarks/check_fused.py --out "$OUT/fused.json"
fi

# 2. target 1: statistics at each capture site vs the plain forward pass (ratio, peak memory)
SITES=${SITES:-plain,eavss,eavss_resid_delta,eavss_resid_delta_nobi,eavss_mlp_act,eavss_mlp_act_nobi}
COMMON="--dtype $DT --device $DEV $SHAPE --pad right --repeats 3 --warmup 1 --memory-batches 2"
step sites_qwen 100 $PY benchmarks/stats_overhead.py --model $MQ $COMMON \
     --variants $SITES --out "$OUT/sites_qwen.json"
step sites_llama 90 $PY benchmarks/stats_overhead.py --model $ML $COMMON \
     --variants $SITES --out "$OUT/sites_llama.json"

# 3. where the time goes at each site, and whether another launch configuration reads the wide rows faster
step profile_sites ${PROFILE_CAP:-70} $PY benchmarks/profile_fused.py --device $DEV --reps 10 --cases $CASES ${PROFILE_ARGS:-} ${EXTRA_CONFIGS:+--extra-configs "$EXTRA_CONFIGS"} \
     --best-config-file "$OUT/best_config_act.txt" --out "$OUT/profile_sites.json"

# 4. target 2a: the analysis's generation with capture vs without vs HF generate (8B shape, batch 8-64)
step gen_overhead ${GEN_CAP:-120} $PY benchmarks/gen_overhead.py --model $MG --device $DEV --dtype $DT $GEN --batches-per-size ${GEN_PER:-1} \
     --rounds ${GEN_ROUNDS:-9} --warmup 2 --capture-rows 3549 --variants ${GEN_VARIANTS:-capture,capture_layers,capture_stats,plain,hf} \
     --out "$OUT/gen_overhead.json"

# 5. target 2b: the whole analysis by phase (what is left of the budget)
if [ -n "${STEPS:-}" ] && [[ ",$STEPS," != *",hphases,"* ]]; then
  :
elif [ -f "$KIT" ]; then
  mkdir -p /tmp/speedkit && tar xJf "$KIT" -C /tmp/speedkit
  step hphases 400 $PY benchmarks/hallucination_phases.py --model $MH --device $DEV --dtype $DT $HLIM \
       --tokenizer /tmp/speedkit/kit/tokenizer --data-dir /tmp/speedkit/kit/data --out "$OUT/hphases"
  rm -f "$OUT/hphases/samples.jsonl"  # random answers: nothing to read there, and the largest file
else
  echo "== hphases skipped: no kit at $KIT (bash benchmarks/device/speed_kit.sh, then carry .dev/speed)" \
    | tee -a "$OUT/steps.txt"
fi
echo "total ${SECONDS}s of budget ${BUDGET}s" | tee -a "$OUT/steps.txt"
# one archive: a device call brings back at most 8 files
mkdir -p /tmp/speed_pack && rm -rf /tmp/speed_pack/* && mv "$OUT"/* /tmp/speed_pack/ && \
  tar czf "$OUT/speed.tar.gz" -C /tmp/speed_pack . && cp /tmp/speed_pack/steps.txt "$OUT/"
ls -la "$OUT"
