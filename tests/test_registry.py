"""The one registry type: one duplicate policy, one-line lookup errors, metadata read by help."""

from __future__ import annotations

import pytest

from eavss.errors import EavssError
from eavss.registry import Registry, choices


def test_register_lookup_and_metadata():
    reg = Registry("widget", key="w.kind")

    @reg.register("a", help="the first", direction="up")
    def _a():
        """ignored: help was given"""

    reg.register("b", 42, help="forty-two")
    assert reg["a"] is _a and reg["b"] == 42 and reg.names() == ["a", "b"] and list(reg) == ["a", "b"]
    assert reg.entry("a").meta == {"help": "the first", "direction": "up"} and "b" in reg and "c" not in reg
    assert reg.describe() == "a (the first); b (forty-two)"
    with pytest.raises(EavssError, match=r"^w.kind='c' is not valid; choose one of \['a', 'b'\]$"):
        reg["c"]


def test_duplicate_name_is_a_programming_error():
    reg = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    assert reg["a"] == 1


def test_help_defaults_to_the_docstring_and_unregister():
    reg = Registry("fn")

    @reg.register("f")
    def f():
        """First line.

        More."""

    assert reg.entry("f").help == "First line."
    reg.unregister("f")
    reg.unregister("f")  # no-op
    assert "f" not in reg


def test_choices_registry():
    c = choices(("x", "ex"), ("y", "why"), kind="letter", key="k")
    assert list(c) == ["x", "y"] and c["y"] == "y" and c.entry("x").help == "ex"


@pytest.mark.parametrize("module, name", [
    ("eavss.scores.registry", "SCORES"), ("eavss.stats.sites", "SITES"), ("eavss.evaluation.harness", "TASKS"),
    ("eavss.data.calibration", "CALIBRATION_SETS"), ("eavss.data.qa", "QA_SOURCES"), ("eavss.models.loading", "ALIASES"),
    ("eavss.scores.hallucination", "HSAV_METHODS"), ("eavss.scores.hallucination", "HSS_METHODS"),
    ("eavss.scores.hallucination", "COMBINATIONS"), ("eavss.scores.hallucination", "POOLINGS"),
    ("eavss.stats.accumulators", "VARIANCE_DEFINITIONS"), ("eavss.recipes", "RECIPES"), ("eavss.prune.metrics", "METRICS"),
])
def test_every_registry_is_a_registry_with_help(module, name):
    import importlib

    reg = getattr(importlib.import_module(module), name)
    assert isinstance(reg, Registry) and len(reg) > 0
    assert all(e.help for e in reg.entries()), [e.name for e in reg.entries() if not e.help]


def test_compute_scores_never_drops_a_score_that_raises(tiny):
    from eavss.data.calibration import make_batches, tokenize_samples
    from eavss.scores.registry import SCORES, ScoreOptions, compute_scores, register_score
    from eavss.stats import collect_statistics

    lm = tiny("llama")
    seqs = tokenize_samples(lm.tokenizer, ["a b c d e f", "g h i"], max_length=8)
    stats, _ = collect_statistics(lm.model, make_batches(seqs, 2, lm.tokenizer.pad_token_id), site="resid_delta",
                                  block_influence=False)
    scores, skipped = compute_scores(stats, ScoreOptions())
    assert "avss" in scores and "block_influence" in skipped and "block_influence=true" in skipped["block_influence"]
    with pytest.raises(EavssError, match="block_influence.*not available"):
        compute_scores(stats, ScoreOptions(), names=["block_influence"])

    @register_score("broken_for_test", "raises")
    def _broken(stats, options):
        raise EavssError("broken score")

    try:
        with pytest.raises(EavssError, match="broken score"):
            compute_scores(stats, ScoreOptions())
    finally:
        SCORES.unregister("broken_for_test")
