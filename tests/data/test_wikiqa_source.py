"""The ``wikiqa`` QA source: correct vs. incorrect candidate sentences, skips counted, same split rule."""

from __future__ import annotations

import gzip

import pytest

from eavss.data.wikiqa import HEADER

ROWS = [  # QuestionID, Question, DocumentID, DocumentTitle, SentenceID, Sentence, Label
    ("Q1", "how are glacier caves formed?", "D1", "Glacier cave", "D1-0", "A partly submerged glacier cave.", "0"),
    ("Q1", "how are glacier caves formed?", "D1", "Glacier cave", "D1-1", "The ice facade is approximately 60 m high", "0"),
    ("Q1", "how are glacier caves formed?", "D1", "Glacier cave", "D1-2", "A glacier cave is a cave formed within the ice of a glacier .", "1"),
    ("Q2", "how much is 1 tablespoon of water", "D2", "Tablespoon", "D2-0", "This tablespoon has a capacity of about 15 mL.", "0"),
    ("Q2", "how much is 1 tablespoon of water", "D2", "Tablespoon", "D2-1", "In the USA one tablespoon is 14.8 ml", "0"),
    ("Q3", "what is a \"spider\"?", "D3", "Spider", "D3-0", "Spiders are air-breathing arthropods.", "1"),
    ("Q3", "what is a \"spider\"?", "D3", "Spider", "D3-1", "They have eight legs.", "1"),
    ("Q4", "who wrote hamlet", "D4", "Hamlet", "D4-0", "Hamlet is a tragedy.", "0"),
    ("Q4", "who wrote hamlet", "D4", "Hamlet", "D4-1", "It was written by William Shakespeare .", "1"),
    ("Q4", "who wrote hamlet", "D4", "Hamlet", "D4-2", "It is set in Denmark.", "0"),
]


def _write(root, split, rows):
    path = root / "wikiqa" / "github_jhu-copy" / f"WikiQA-{split}.tsv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\t".join(HEADER) + "\n")
        for r in rows:
            fh.write("\t".join(r) + "\n")


@pytest.fixture
def fixture_dir(tmp_path):
    _write(tmp_path, "dev", ROWS[:5])
    _write(tmp_path, "test", ROWS[5:])
    return tmp_path


def test_fixture_pairs_and_skips(fixture_dir, caplog):
    from eavss.data.qa import (
        QA_SOURCES,
        TEACHER_FORCED,
        load_source,
        wikiqa_source_counts,
    )

    assert "wikiqa" in QA_SOURCES and "wikiqa" in TEACHER_FORCED
    assert QA_SOURCES.entry("wikiqa").meta["kind"] == "teacher_forced"
    with caplog.at_level("INFO", logger="eavss.data.qa"):
        items = load_source("wikiqa", str(fixture_dir))
    assert [it.qid for it in items] == ["Q1", "Q4"]  # Q2: no correct candidate; Q3: no incorrect one
    q1, q4 = items
    assert q1.source == "wikiqa" and q1.question == "how are glacier caves formed?"
    assert q1.golds == ["A glacier cave is a cave formed within the ice of a glacier ."]
    assert q1.incorrect == ["A partly submerged glacier cave.", "The ice facade is approximately 60 m high"]
    assert q4.golds == ["It was written by William Shakespeare ."] and q4.incorrect == ["Hamlet is a tragedy.", "It is set in Denmark."]
    assert "skipped 1 with no correct candidate and 1 with no incorrect candidate" in caplog.text
    assert wikiqa_source_counts(str(fixture_dir)) == {"questions": 4, "kept": 2, "skipped_no_correct": 1,
                                                      "skipped_no_incorrect": 1, "splits": ["dev", "test"]}


def test_real_wikiqa_source_counts_and_split_rule():
    from eavss.data.qa import load_source, wikiqa_source_counts
    from eavss.hallucination.splits import assign_part, build_splits, split_source

    items = load_source("wikiqa")
    c = wikiqa_source_counts()
    # dev 296 + test 633 questions; 126 + 243 have a correct candidate, 4 + 6 of those have no incorrect one
    assert c == {"questions": 929, "kept": 359, "skipped_no_correct": 560, "skipped_no_incorrect": 10,
                 "splits": ["dev", "test"]}
    assert len(items) == 359 and len({it.qid for it in items}) == 359
    assert all(it.golds and it.incorrect for it in items)
    parts = split_source("wikiqa", [it.qid for it in items], 0, (0.5, 0.25, 0.25))
    assert sum(len(v) for v in parts.values()) == 359
    for part, ids in parts.items():
        assert all(assign_part(0, "wikiqa", q, (0.5, 0.25, 0.25)) == part for q in ids)
    splits = build_splits({"wikiqa": items}, 0, (0.5, 0.25, 0.25), {"wikiqa": parts["score"][:5]})
    d = splits["sources"]["wikiqa"]
    assert not (set(d["parts"]["train"]) & set(d["parts"]["score"])) and not (set(d["parts"]["eval"]) & set(d["parts"]["score"]))


def test_hallucination_recipe_builds_wikiqa_pairs():
    """The analysis picks the source from the registry: one (correct, incorrect) teacher-forced pair
    per question, with the same split rule (only score-part ids used)."""
    from eavss.config import load_config
    from eavss.recipes.hallucination import HallucinationConfig, prepare

    cfg = load_config(HallucinationConfig, None, ["sources=[wikiqa]", "limits={wikiqa: 7}", "scores.min_per_class=2"])
    splits, samples = prepare(cfg)
    assert len(samples) == 14 and {s.kind for s in samples} == {"teacher_forced"}
    assert [s.label for s in samples[:2]] == [0, 1]
    used = {s.qid for s in samples}
    d = splits["sources"]["wikiqa"]
    assert used == set(d["used_here"]) and used <= set(d["parts"]["score"])
