#!/usr/bin/env bash
# On the lent GPU machine: make eavss importable and assemble the real models from carried parts.
#   bash benchmarks/device/prepare.sh stash            # copy the carried .dev/*/ parts into /tmp/parts
#   bash benchmarks/device/prepare.sh setup            # + install carried .whl/*.whl, assemble, check sha256
# Then: export PYTHONPATH=/tmp/site:$PWD/src; models are /tmp/models/{smollm2,gemma3}.gguf; data: .dev/data
# (Made by hand here: .dev/ holds the GGUF files split in <= 50 MB parts and a copy of the data
# files a run needs; .whl/ the wheels the image lacks: gguf, lm_eval and its pure-Python needs.)
set -euo pipefail
mkdir -p /tmp/parts /tmp/models
for d in .dev/*/; do
  [ "$d" = ".dev/data/" ] && continue
  cp -n "$d"* /tmp/parts/ 2>/dev/null || true
done
ls -la /tmp/parts
[ "${1:-stash}" = "setup" ] || exit 0
if [ -d .whl ] && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
assemble() {  # name sha256 glob
  local out=/tmp/models/$1.gguf
  if [ ! -f "$out" ] && ls /tmp/parts/$3 >/dev/null 2>&1; then cat $(ls /tmp/parts/$3 | sort -V) > "$out"; fi
  [ -f "$out" ] || { echo "$1: parts missing"; return 0; }
  echo "$2  $out" | sha256sum -c - || { rm -f "$out"; echo "$1: sha256 mismatch"; return 1; }
}
assemble smollm2 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 'smollm2.gguf.part*'
assemble gemma3 a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 'gemma.gguf.part*'
ls -la /tmp/models
