"""The QA sources load from the offline data with unique ids."""

from __future__ import annotations




TAU = 0.01



def test_real_sources_load_with_unique_ids():
    from eavss.data.qa import QA_SOURCES, load_source

    expected = {"truthfulqa": 817, "halueval": 500, "nq_open": 3610, "triviaqa": 7993, "sciq": 1000, "wikiqa": 359}
    for name in QA_SOURCES:
        items = load_source(name)
        assert len({it.qid for it in items}) == len(items)
        assert len(items) <= expected[name] and len(items) > 0.95 * expected[name]
        assert all(it.golds for it in items)
        if name in ("truthfulqa", "halueval", "wikiqa"):
            assert all(it.incorrect for it in items)
        if name == "sciq":
            assert all(len(it.options) == 4 and it.correct == it.options[0] for it in items)
