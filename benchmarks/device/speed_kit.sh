#!/usr/bin/env bash
# Build the small kit that benchmarks/device/speed.sh needs on the GPU machine for the
# `eavss hallucination` phase timing (everything else there needs nothing but this tree):
#   .dev/speed/kit.tar.xz = kit/data/{truthfulqa,halueval,nq_open,triviaqa,sciq,wikiqa}/ (the QA files the
#   analysis reads) + kit/tokenizer/ (SmolLM2-135M's tokenizer, from the converted-model cache)
# Run from the repository root on the development machine, then carry ".dev/speed" in the device call:
#   bash benchmarks/device/speed_kit.sh            # ~5 MB; .dev/ is git-ignored (info/exclude)
set -euo pipefail
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
DATA=$(PYTHONPATH=src "$PY" -c 'from eavss.data.paths import resolve_data_dir; print(resolve_data_dir(None))')
TOK=$(PYTHONPATH=src "$PY" -c '
from eavss.models.loading import ALIASES, cache_root
print(cache_root() / ALIASES["smollm2-135m"].sha256[:16])')
if [ ! -f "$TOK/tokenizer.json" ]; then  # not converted yet: load the alias once (converts the GGUF into the cache)
  PYTHONPATH=src "$PY" -c 'from eavss.models.loading import load_model; load_model("smollm2-135m")' >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/kit/data" "$tmp/kit/tokenizer" .dev/speed
for s in truthfulqa halueval nq_open triviaqa sciq wikiqa; do cp -r "$DATA/$s" "$tmp/kit/data/"; done
cp "$TOK"/tokenizer.json "$TOK"/tokenizer_config.json "$tmp/kit/tokenizer/"
[ -f "$TOK/special_tokens_map.json" ] && cp "$TOK/special_tokens_map.json" "$tmp/kit/tokenizer/"
chmod -R u+w "$tmp/kit"
tar cJf .dev/speed/kit.tar.xz -C "$tmp" kit
ls -la .dev/speed
