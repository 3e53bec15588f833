"""Test and benchmark helpers: tiny randomly initialised models and a tiny local tokenizer.

Nothing here touches the network; everything is built from configs and a built-in text.
"""

from __future__ import annotations

from eavss.testing.tiny import (
    REAL_MODEL_SHAPES,
    TINY_ARCHS,
    TINY_VOCAB_SIZE,
    real_model_shape_config,
    tiny_config,
    tiny_loaded,
    tiny_model,
    tiny_tokenizer,
)

__all__ = [
    "REAL_MODEL_SHAPES",
    "TINY_ARCHS",
    "TINY_VOCAB_SIZE",
    "real_model_shape_config",
    "tiny_config",
    "tiny_loaded",
    "tiny_model",
    "tiny_tokenizer",
]
