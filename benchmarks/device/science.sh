#!/usr/bin/env bash
# The heavy science runs on the lent GPU (the real SmolLM2 weights assembled by prepare.sh), each with a
# time cap so that one command's overrun never loses the others; both commands resume when run again
# (their work folders live in /tmp/runs while the machine stays warm). Reports (no weights) go to $OUT.
#   bash benchmarks/device/science.sh speed     # H200 training speed, Llama-3-8B shape (random weights)
#   bash benchmarks/device/science.sh compare   # every pruning metric side by side, healed (issue 11)
#   bash benchmarks/device/science.sh mitigate  # EAVSS layers + every control + leave-one-dataset-out (issue 12)
# MODEL=gemma3 picks the second model (after prepare.sh has assembled it): e.g. MODEL=gemma3 science.sh compare;
# its mitigation reads the carried CPU analysis (/tmp/kit/h_gemma3, made by `eavss hallucination --model gemma3-270m`),
# else run MODEL=gemma3 science.sh hallucination first.
# NAME=dir names the output folder (default: compare / m), THREADS=n sets --threads (several jobs sharing the 16
# cores), and words after the subcommand are extra key=value overrides, e.g. a training-budget sweep:
#   NAME=m_lr1e-3 LODO= science.sh mitigate train.lr=1e-3 train.epochs=3 controls.variants=[random,none]
# Several jobs at once on one GPU, each in the background (survives the call while the machine stays warm):
#   bash benchmarks/device/bg.sh NAME 'MODEL=... science.sh ...'   and   WAIT=540 bash benchmarks/device/poll.sh
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/src EAVSS_DATA_DIR=/tmp/kit/data EAVSS_CACHE=/tmp/eavsscache PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
E="python3 -m eavss.cli"
MODEL=${MODEL:-smollm2}
M=/tmp/models/$MODEL.gguf
R=/tmp/runs/$MODEL
mkdir -p $R
H=/tmp/kit/h; [ "$MODEL" = smollm2 ] || H=/tmp/kit/h_$MODEL; [ -d "$H" ] || H=$R/h   # the carried analysis, else this run's
CAP=${CAP:-540}
step() { local name=$1 secs=$2; shift 2; local t0=$SECONDS
  timeout --signal=INT --kill-after=30 "$secs" "$@" >> "$R/$name.log" 2>&1; local rc=$?
  echo "== $name rc=$rc $((SECONDS - t0))s"; tail -n 4 "$R/$name.log" | cut -c1-300; }
CMD=${1:-}; shift || true
TH=${THREADS:+--threads $THREADS}
case "$CMD" in
speed)
  step train_speed "$CAP" python3 benchmarks/train_speed.py --model shape:llama3-8b --device cuda --dtype bfloat16 \
       --batch-size 8 --negatives 4 --prompt-len 128 --answer-len 32 --steps 8 --warmup 2 --layers 0,10,13,16,24 \
       --out $R/train_speed_llama3-8b.json
  ;;
hallucination)
  step hallucination "$CAP" $E hallucination --model $M --device cuda --no-progress --out $R/h --overwrite $TH "$@"
  ;;
compare)
  step ${NAME:-compare} "$CAP" $E compare --config src/eavss/configs/compare.yaml --model $M --device cuda --heal --no-progress \
       --out $R/${NAME:-compare} --overwrite $TH eval.batch_size=32 heal.batch_size=16 heal.steps=100 "$@"
  ;;
mitigate)
  step ${NAME:-mitigate} "$CAP" $E mitigate --config src/eavss/configs/mitigate.yaml --from $H --model $M \
       --out $R/${NAME:-m} --controls ${LODO---lodo} --no-progress --limit 300 train.epochs=1 train.batch_size=16 train.grad_accum=1 \
       eval.batch_size=64 $TH "$@"
  ;;
*) echo "usage: [MODEL=smollm2|gemma3] science.sh speed|hallucination|compare|mitigate"; exit 2;;
esac
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
tar czf $OUT/runs.tar.gz --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='*.pth' \
    --exclude='checkpoint*' -C /tmp runs 2>/dev/null
ls -la $OUT
