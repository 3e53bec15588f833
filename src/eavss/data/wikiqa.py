"""WikiQA (Yang, Yih & Meek 2015, EMNLP, "WikiQA: A Challenge Dataset for Open-Domain Question
Answering"): per-question candidate sentences with 0/1 labels, from the offline data folder.

Files (``shared/data/SOURCES.md``, section ``wikiqa/github_jhu-copy/``): a JHU redistribution of
the Microsoft corpus, gzip'd tab-separated files with a header ``QuestionID, Question,
DocumentID, DocumentTitle, SentenceID, Sentence, Label`` and one row per (question, candidate
sentence). Rows are read with no quote handling (``csv.QUOTE_NONE``: the original files do not
quote, and sentences contain ``"``). Counts: dev 2,733 rows / 296 questions (126 with a correct
sentence), test 6,165 rows / 633 questions (243 with a correct sentence; Yang et al. evaluate
answer-sentence selection on those 243). Licence: Microsoft Research Data License Agreement
(research use; keep ``LICENSE.pdf`` next to the data).
"""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass, field

from eavss.errors import EavssError

WIKIQA_FILES: dict[str, str] = {
    "dev": "wikiqa/github_jhu-copy/WikiQA-dev.tsv.gz",
    "test": "wikiqa/github_jhu-copy/WikiQA-test.tsv.gz",
}
"""Split -> file, relative to the data root (:func:`eavss.data.paths.resolve_data_dir`)."""

HEADER = ["QuestionID", "Question", "DocumentID", "DocumentTitle", "SentenceID", "Sentence", "Label"]


@dataclass
class WikiQARecord:
    """One WikiQA question and its candidate sentences, in file order.

    Attributes:
        qid: ``QuestionID`` (e.g. "Q8"). question: question text (as in the file).
        candidates: candidate sentences. labels: 0/1 per candidate (1 = answers the question).
        document_title: the Wikipedia page the candidates come from.
        sentence_ids: ``SentenceID`` per candidate (e.g. "D8-0").
    """

    qid: str
    question: str
    candidates: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    document_title: str = ""
    sentence_ids: list[str] = field(default_factory=list)

    @property
    def has_correct(self) -> bool:
        """Whether at least one candidate is labelled 1."""
        return any(self.labels)


def load_wikiqa(split: str = "test", data_dir: str | os.PathLike | None = None) -> list[WikiQARecord]:
    """All questions of a WikiQA split, grouped from its rows (first-appearance order).

    Args:
        split: "dev" or "test" (the train split is not in the data folder).
        data_dir: data root, or None for :func:`eavss.data.paths.resolve_data_dir`'s default.

    Returns:
        list of :class:`WikiQARecord` (dev: 296, test: 633), questions without a correct
        candidate included (``has_correct`` False).

    Raises:
        EavssError: unknown split; the file is missing (names ``--data-dir``); a header, row width
            or label that is not WikiQA's; one QuestionID with two question texts.
    """
    from eavss.data.paths import data_file

    if split not in WIKIQA_FILES:
        raise EavssError(f"unknown WikiQA split {split!r}; choose one of {', '.join(WIKIQA_FILES)}")
    path = data_file(data_dir, WIKIQA_FILES[split])
    records: dict[str, WikiQARecord] = {}
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header != HEADER:
            raise EavssError(f"{path} has header {header!r}, expected {HEADER}; check the data file (SOURCES.md)")
        for line, row in enumerate(reader, start=2):
            if len(row) != len(HEADER):
                raise EavssError(f"{path} line {line} has {len(row)} fields, expected {len(HEADER)}; check the data file")
            qid, question, _doc_id, title, sid, sentence, label = row
            if label not in ("0", "1"):
                raise EavssError(f"{path} line {line}: Label {label!r} is not 0 or 1; check the data file")
            rec = records.get(qid)
            if rec is None:
                rec = records[qid] = WikiQARecord(qid=qid, question=question, document_title=title)
            elif rec.question != question:
                raise EavssError(f"{path} line {line}: question {qid} appears with two texts; check the data file")
            rec.candidates.append(sentence)
            rec.labels.append(int(label))
            rec.sentence_ids.append(sid)
    if not records:
        raise EavssError(f"{path} has no rows; check the data file")
    return list(records.values())
