"""eavss.data.wikiqa: the WikiQA dev/test files grouped per question; counts from shared/data/SOURCES.md."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from eavss.data.wikiqa import WIKIQA_FILES, load_wikiqa
from eavss.errors import EavssError


def _data_root() -> Path | None:
    from eavss.data.paths import resolve_data_dir

    try:
        root = resolve_data_dir(None)
    except EavssError:
        return None
    return root if (root / WIKIQA_FILES["test"]).is_file() else None


DATA = _data_root()
needs_data = pytest.mark.skipif(DATA is None, reason="shared/data/wikiqa not found (set EAVSS_DATA_DIR)")

# SOURCES.md: dev 2,733 rows / 296 questions, test 6,165 rows / 633 questions. With a correct
# sentence: 126 dev, 243 test (the 243 of Yang et al. 2015); only correct sentences: 4 dev, 6 test.
EXPECTED = {"dev": (296, 2733, 126, 4), "test": (633, 6165, 243, 6)}


@needs_data
@pytest.mark.parametrize("split", ["dev", "test"])
def test_counts_match_sources(split):
    recs = load_wikiqa(split, DATA)
    n_q, n_rows, n_correct, n_all = EXPECTED[split]
    assert len(recs) == n_q
    assert sum(len(r.candidates) for r in recs) == n_rows
    assert sum(r.has_correct for r in recs) == n_correct
    assert sum(all(r.labels) for r in recs) == n_all
    assert len({r.qid for r in recs}) == n_q
    assert all(len(r.candidates) == len(r.labels) == len(r.sentence_ids) for r in recs)


@needs_data
def test_first_question_fields():
    dev = load_wikiqa("dev", DATA)
    q = dev[0]
    assert (q.qid, q.question, q.document_title) == ("Q8", "How are epithelial tissues joined together?", "Tissue (biology)")
    assert q.sentence_ids[0] == "D8-0" and q.labels[0] == 0
    assert q.candidates[0] == "Cross section of sclerenchyma fibers in plant ground tissue"


def _write(root: Path, text: str) -> None:
    p = root / WIKIQA_FILES["dev"]
    p.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        fh.write(text)


HEAD = "QuestionID\tQuestion\tDocumentID\tDocumentTitle\tSentenceID\tSentence\tLabel\n"


def test_grouping_quotes_and_errors(tmp_path):
    _write(tmp_path, HEAD + 'Q1\tWhat?\tD1\tT\tD1-0\tHe said "yes\t1\nQ2\tWho?\tD2\tU\tD2-0\tNo.\t0\nQ1\tWhat?\tD1\tT\tD1-1\tB\t0\n')
    recs = load_wikiqa("dev", tmp_path)
    assert [r.qid for r in recs] == ["Q1", "Q2"]
    assert recs[0].candidates == ['He said "yes', "B"] and recs[0].labels == [1, 0]
    assert not recs[1].has_correct
    _write(tmp_path, HEAD + "Q1\tWhat?\tD1\tT\tD1-0\tA\t2\n")
    with pytest.raises(EavssError, match="Label"):
        load_wikiqa("dev", tmp_path)
    _write(tmp_path, "a\tb\n")
    with pytest.raises(EavssError, match="header"):
        load_wikiqa("dev", tmp_path)
    _write(tmp_path, HEAD + "Q1\tWhat?\tD1\tT\tA\t1\n")
    with pytest.raises(EavssError, match="fields"):
        load_wikiqa("dev", tmp_path)
    with pytest.raises(EavssError, match="unknown WikiQA split"):
        load_wikiqa("train", tmp_path)
    with pytest.raises(EavssError, match="missing"):
        load_wikiqa("test", tmp_path)
