#!/usr/bin/env bash
# Issue 10, target 2b on the real default model: `eavss hallucination` with every default limit on one
# H200, by phase (the report's `timings`), for this tree ("after") and for an earlier commit ("before",
# default: the session's start, from the device copy's .git), in the order after, before[, after].
# Needs the real SmolLM2 weights assembled by prepare.sh (carry .dev/k2 in one call with `prepare.sh stash`,
# then .dev/k1 in the next):
#   device call: command "bash benchmarks/device/prepare.sh setup && bash benchmarks/device/hreal.sh",
#                carry [".dev/k1"], kind nvidia-h200
# Knobs: BEFORE (commit, default f2308f2), CAP (seconds per run, default 170), REPEAT=1 (a second "after" run),
# NO_BEFORE=1 (no "before" run).
# Out: $OUT/h_{after,before,after2}.json (report.json without samples), steps.txt, *.log, and all of it in
# $OUT/hreal.tar.gz (a device call brings back at most 8 files).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/src EAVSS_DATA_DIR=/tmp/kit/data EAVSS_CACHE=/tmp/eavsscache PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export OUT=${OUT:-/tmp/hreal_out}; mkdir -p "$OUT"
M=/tmp/models/smollm2.gguf
BEFORE=${BEFORE:-f2308f2}
CAP=${CAP:-170}
[ -f "$M" ] || { echo "no $M: run prepare.sh setup with the k1/k2 parts first"; exit 2; }
rm -rf /tmp/before && mkdir -p /tmp/before && git archive "$BEFORE" src | tar -x -C /tmp/before || exit 2
run() {  # run NAME SRC
  local name=$1 src=$2 t0=$SECONDS rc
  PYTHONPATH=/tmp/site:$src timeout --signal=INT --kill-after=20 "$CAP" python3 -m eavss.cli hallucination \
    --model "$M" --device cuda --no-progress --out /tmp/runs/$name --overwrite > "$OUT/$name.log" 2>&1; rc=$?
  echo "== $name rc=$rc $((SECONDS - t0))s (src $src)" | tee -a "$OUT/steps.txt"
  python3 - "$name" "$src" <<'PY'
import hashlib, json, os, sys
name, src = sys.argv[1:3]
d = f"/tmp/runs/{name}"
try:
    rep = json.load(open(f"{d}/report.json"))
except Exception as e:  # noqa: BLE001
    print("no report:", e); sys.exit(0)
keep = {k: rep[k] for k in ("code", "threads", "timings", "samples", "device", "model", "generation") if k in rep}
keep["src"] = src
keep["samples_sha256"] = hashlib.sha256(open(f"{d}/samples.jsonl", "rb").read()).hexdigest() \
    if os.path.exists(f"{d}/samples.jsonl") else None
json.dump(keep, open(f"{os.environ['OUT']}/{name}.json", "w"), indent=1)
t = rep.get("timings", {})
print(" ".join(f"{k}={v:.2f}" for k, v in t.items() if isinstance(v, (int, float))))
PY
}
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/env.txt" 2>&1
python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)' >> "$OUT/env.txt" 2>&1
run h_after "$PWD/src"
[ "${NO_BEFORE:-0}" = 1 ] || run h_before /tmp/before/src
[ "${REPEAT:-0}" = 1 ] && run h_after2 "$PWD/src"
tar czf "$OUT/hreal.tar.gz" -C "$OUT" $(cd "$OUT" && ls | grep -v hreal.tar.gz)
ls -la "$OUT"
