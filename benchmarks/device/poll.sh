#!/usr/bin/env bash
# Wait (at most WAIT seconds, default 0) for the background jobs that bg.sh started, then say how each stands and
# tar /tmp/runs (reports, logs, work folders; no weights or checkpoints) to $OUT/runs.tar.gz.
#   WAIT=540 bash benchmarks/device/poll.sh
set -uo pipefail
WAIT=${WAIT:-0}; t0=$SECONDS
running() { local n=0; for f in /tmp/bg/*.log; do [ -f "${f%.log}.rc" ] || n=$((n + 1)); done; echo $n; }
while [ "$(running)" -gt 0 ] && [ $((SECONDS - t0)) -lt "$WAIT" ]; do sleep 5; done
for f in /tmp/bg/*.log; do
  n=$(basename "$f" .log); rc=$(cat "/tmp/bg/$n.rc" 2>/dev/null || echo running)
  echo "== $n: $rc"; tail -n 3 "$f" | cut -c1-300
done
for f in /tmp/runs/*/*.log; do echo "-- $f"; tail -c 600 "$f" | tr '\r' '\n' | tail -n 3 | cut -c1-250; done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
uptime
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='*.pth' \
    --exclude='checkpoint*' -C /tmp runs 2>/dev/null
ls -la "$OUT"
