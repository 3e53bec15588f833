#!/usr/bin/env bash
# The heavy science runs on the lent GPU (real SmolLM2 weights assembled by prepare.sh), each with a time cap
# so that one command's overrun never loses the others. Results (reports, no weights) go to $OUT/runs.tar.gz.
#   bash benchmarks/device/science.sh A     # analysis + main job + metric comparison with healing
#   bash benchmarks/device/science.sh B     # mitigation with controls and leave-one-dataset-out (resumable)
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/src EAVSS_DATA_DIR=$PWD/.dev/data EAVSS_CACHE=/tmp/eavsscache PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
E="python3 -m eavss.cli"
M=/tmp/models/smollm2.gguf
mkdir -p runs
step() { local name=$1 secs=$2; shift 2; local t0=$SECONDS
  timeout --signal=TERM "$secs" "$@" > "runs/$name.log" 2>&1; local rc=$?
  echo "== $name rc=$rc $((SECONDS - t0))s"; tail -n 3 "runs/$name.log" | cut -c1-300; }
case "${1:-A}" in
A)
  python3 -c "import lm_eval, gguf, peft, eavss.cli; print('imports ok')" || exit 1
  step hallucination 200 $E hallucination --model $M --device cuda --no-progress --out runs/h --overwrite
  step run 150 $E run --model $M --device cuda --no-progress --out runs/run --overwrite --no-save-model
  step compare 230 $E compare --config src/eavss/configs/compare.yaml --model $M --device cuda --heal --no-progress \
       --out runs/compare --overwrite heal.steps=100 eval.limits.sciq=300 eval.limits.squad=100 compare.random_seeds=3
  ;;
B)
  step mitigate 450 $E mitigate --config src/eavss/configs/mitigate.yaml --from runs/h --model $M --out runs/m \
       --controls --lodo --no-progress --limit 100 --eval-limit 150 train.epochs=1 controls.random_seeds=[0] \
       eval.resamples=1000
  ;;
esac
tar czf $OUT/runs.tar.gz --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='*.work' runs 2>/dev/null
ls -la $OUT
