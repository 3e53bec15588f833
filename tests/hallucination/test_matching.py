"""Length-matched teacher-forced pairs: the matching rule by hand, and the recipe step on hand-made samples."""

from __future__ import annotations

import pytest

from eavss.errors import EavssError
from eavss.hallucination.matching import match_by_length


def test_match_by_length_by_hand():
    assert match_by_length([5], [12, 4, 7, 6]) == [1]  # |4-5| = |6-5| = 1: the earlier candidate wins
    assert match_by_length([5, 6], [12, 4, 7, 6]) == [1, 3]  # without replacement
    assert match_by_length([3], [3, 3]) == [0]  # an already matched file order is kept
    assert match_by_length([], [1]) == []
    with pytest.raises(EavssError, match="at least as many"):
        match_by_length([1, 2], [1])


def test_match_pair_lengths_step(tiny):
    from eavss.config import load_config
    from eavss.data.qa import QAItem
    from eavss.recipes.hallucination import HallucinationConfig, build_samples, match_pair_lengths, tokenise

    lm = tiny()
    items = {"truthfulqa": [QAItem("truthfulqa", "q1", "Why?", golds=["Because of rain"],
                                   incorrect=["Because the moon is made of green cheese and more.", "Because of sun.",
                                              "No"]),
                            QAItem("truthfulqa", "q2", "Who?", golds=["Nobody"], incorrect=["Nobody at all", "Me"])],
             "halueval": [QAItem("halueval", "h1", "Where?", golds=["Paris"], incorrect=["It is in the city of Lyon."])]}
    for match in ("none", "length"):
        cfg = load_config(HallucinationConfig, None, ["sources=[truthfulqa,halueval]", f"teacher_forced.match={match}"])
        samples = build_samples(items, cfg)
        tokenise(samples, lm.model, lm.tokenizer, True, 48)
        info = match_pair_lengths(samples, lm.tokenizer, match, 48)
        bad = {s.qid: s for s in samples if s.label == 1}
        n = {s.qid: len(s.answer_ids) for s in samples if s.label == 0}
        tq = info["truthfulqa"]
        assert tq["match"] == match and tq["questions"] == 2 and tq["candidates_per_question"] == pytest.approx(2.5)
        if match == "none":
            assert bad["q1"].answer.startswith("Because the moon") and bad["q1"].reference_index == 0
            assert tq["questions_changed"] == 0 and tq["mean_tokens_after"] == tq["mean_tokens_before"]
        else:  # the candidate closest in token length to the truthful answer, answer ids re-tokenised
            lens = [len(lm.tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for a in bad["q1"].alternatives]
            best = min(range(3), key=lambda i: (abs(lens[i] - n["q1"]), i))
            assert bad["q1"].reference_index == best and bad["q1"].answer == bad["q1"].alternatives[best]
            assert len(bad["q1"].answer_ids) == lens[best]
            assert abs(tq["mean_tokens_after"]["hallucinated"] - tq["mean_tokens_after"]["truthful"]) <= \
                abs(tq["mean_tokens_before"]["hallucinated"] - tq["mean_tokens_before"]["truthful"])
            assert bad["q1"].record()["reference_index"] == best
            assert tq["mean_abs_pair_difference_after"] <= tq["mean_abs_pair_difference_before"]
        # HaluEval has one hallucinated answer: nothing to match
        assert info["halueval"]["questions_changed"] == 0 and bad["h1"].answer == "It is in the city of Lyon"
