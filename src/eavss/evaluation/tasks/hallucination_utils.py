"""Data, prompts and scoring of the hallucination evaluation suite's lm-eval tasks (local files only).

lm-eval loads this file by path (``!function hallucination_utils.NAME`` in the ``eavss_*`` YAMLs of
this folder); it is also importable as ``eavss.evaluation.tasks.hallucination_utils``. Absolute
imports only, so both ways of loading work. The runners in :mod:`eavss.evaluation.hallucination_suite`
pass the settings as task metadata (``TaskManager(metadata=...)``), which lm-eval hands to every
``custom_dataset`` function as keyword arguments:

``data_dir``  the data root.
``splits``    path of an ``eavss hallucination`` ``splits.json`` (or its folder), or None: then the
              default split rule (seed 0, fractions 0.5/0.25/0.25) of
              :mod:`eavss.hallucination.splits` is applied to the source's ids.
``part``      which part to evaluate (``eval``; the analysis scored ``score``, training uses ``train``).
``limit``     the first N questions of the part in split-hash order (a seeded random subset), or None.
``options``   task options (``mc_file`` for TruthfulQA, ``support`` for SciQ).

Which questions (:func:`part_ids`): the ids of the part as ``splits.json`` lists them, in its
(split-hash) order; for a source the file does not list (e.g. an analysis run without WikiQA), the
same rule with the file's seed and fractions. Question ids are the analysis' ids
(:mod:`eavss.data.qa`), so "evaluated" and "scored by the analysis" and "trained on" can be
checked for overlap; they never overlap by construction.

Scoring, per dataset, as the field does it:

* **NQ-open**: exact match after the official normalisation (SQuAD v1.1 ``normalize_answer``: lower
  case, ASCII punctuation deleted, articles a/an/the removed, whitespace collapsed), max over the
  gold answers (Lee et al. 2019 / the NQ-open README).
* **TriviaQA**: exact match after TriviaQA's official ``normalize_answer`` (``triviaqa_evaluation.py``,
  Joshi et al. 2017): ``_`` -> space, lower case, punctuation (ASCII plus ‘ ’ ´ `) *replaced by a
  space*, articles removed, whitespace collapsed; max over the answer value and every alias and
  normalised alias ("Washington, D.C." -> "washington d c").
* Generation for both: greedy, stop at the first newline (or EOS), never at "." or ",".
* **SciQ** (``sciq_mc``): multiple choice over the four options in lm-eval's order (three
  distractors, then the correct answer); ``acc`` = argmax of summed log-likelihood, ``acc_norm``
  = argmax of log-likelihood per character (lm-eval's definitions). Closed book: the support
  paragraph is not shown unless ``support`` is set (lm-eval's sciq shows it).
* **TruthfulQA**: lm-eval's truthfulqa_mc1 / mc2 / gen, same six-shot QA primer. MC1 = 1 when the
  single true answer has the highest summed log-likelihood; MC2 = normalised probability mass of
  the true answers. Generation (greedy, stop at newline): lm-eval's truthfulqa_gen judge -- BLEU
  and ROUGE-L (``rougeLsum``) of the completion against every true reference ("I have no comment."
  added, a final "." added where missing) and every false reference; ``*_acc`` = 1 when the best
  true reference scores higher than the best false one.
* **WikiQA**: answer-sentence selection; every candidate sentence of a question is scored by the
  model's log-likelihood of it after ``Q: {question}\\nA:``; MAP and MRR with
  :mod:`eavss.evaluation.ranking` (stable ties). ``map``/``mrr`` rank by log-likelihood per
  character (lm-eval's ``acc_norm`` normalisation; a summed log-likelihood mostly ranks sentences
  by length), ``map_sum``/``mrr_sum`` by the summed log-likelihood. Questions with no correct
  candidate are excluded and counted.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from typing import Any

TRUTHFULQA_MC = {
    "current": "truthfulqa/github_official-vendored/mc_task.json",
    "v0": "truthfulqa/github_official-vendored/v0/mc_task.json",
}
"""TruthfulQA multiple-choice files: ``current`` = the 2021 revision that matches ``TruthfulQA.csv``
(all 817 questions; default), ``v0`` = the original release (HF ``truthful_qa/multiple_choice``'s
layout, the data lm-eval downloads; 816 questions match the CSV)."""

QA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)
"""The TruthfulQA "QA prompt" (Lin et al. 2021), verbatim as lm-eval's truthfulqa tasks use it."""

DEFAULT_SPLIT = {"seed": 0, "fractions": (0.5, 0.25, 0.25)}
"""The split used when no ``splits.json`` is given (``eavss hallucination``'s defaults)."""


# --------------------------------------------------------------------------- which questions


def _split_rule(splits: str | None) -> tuple[dict | None, int, tuple[float, float, float]]:
    if not splits:
        return None, DEFAULT_SPLIT["seed"], DEFAULT_SPLIT["fractions"]
    from eavss.hallucination.splits import PARTS, load_splits

    sp = load_splits(splits)
    fr = sp.get("fractions") or {}
    return sp, int(sp.get("seed", 0)), tuple(float(fr[p]) for p in PARTS)  # type: ignore[return-value]


def part_ids(source: str, all_ids: Sequence[str], splits: str | None, part: str = "eval") -> list[str]:
    """Ids of ``source`` in ``part``, in split-hash order.

    Args:
        source: QA source name (``nq_open``, ``triviaqa``, ``sciq``, ``truthfulqa``, ``wikiqa``).
        all_ids: every question id the task could evaluate (the source's ids; for WikiQA also the
            questions the training source skips).
        splits: a ``splits.json`` path (or its folder), or None (the default split rule).
        part: ``eval`` (default), ``train`` or ``score``.

    Returns:
        The ids of ``all_ids`` whose part is ``part``. Ids that ``splits.json`` lists come in its
        order (they must all be in ``all_ids``), ids it does not list (a source it does not hold,
        or WikiQA questions without a correct candidate) are assigned by the same rule and merged
        in hash order.

    Raises:
        EavssError: unknown part; ``splits.json`` lists ids this data does not have, or puts an
            id in another part than its rule says (a different file or data).
    """
    from eavss.errors import EavssError
    from eavss.hallucination.splits import PARTS, assign_part, unit_hash

    if part not in PARTS:
        raise EavssError(f"unknown split part {part!r}; choose one of {', '.join(PARTS)}")
    sp, seed, fractions = _split_rule(splits)
    ids = list(dict.fromkeys(all_ids))
    listed = ((sp or {}).get("sources") or {}).get(source)
    if listed is not None:
        known = set(ids)
        for p in PARTS:
            missing = [q for q in listed["parts"][p] if q not in known]
            if missing:
                raise EavssError(f"{splits} lists {len(missing)} {source} ids that this data does not have "
                                 f"(e.g. {missing[0]}); evaluate with the data the analysis used")
        wrong = [q for q in listed["parts"][part] if assign_part(seed, source, q, fractions) != part]
        if wrong:
            raise EavssError(f"{splits} puts {source} id {wrong[0]} in part {part} against its own split rule; "
                             "the file was edited or comes from another eavss version")
    chosen = [q for q in ids if assign_part(seed, source, q, fractions) == part]
    return sorted(chosen, key=lambda q: unit_hash(seed, source, q))


def _take(ids: list[str], limit: int | None) -> list[str]:
    return ids if limit is None else ids[: int(limit)]


def _dataset(docs: list[dict], split: str = "test"):
    import datasets

    from eavss.errors import EavssError

    if not docs:
        raise EavssError("the evaluation part has no question for this task; check the splits file and the limit")
    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})


def _source_items(source: str, data_dir: str | None) -> dict:
    from eavss.data.qa import load_source

    return {it.qid: it for it in load_source(source, data_dir)}


# --------------------------------------------------------------------------- normalisers


def nq_normalize_answer(text: str) -> str:
    """NQ-open's official normalisation (= SQuAD v1.1): lower, delete ASCII punctuation, drop a/an/the, collapse spaces."""
    from eavss.evaluation.tasks.utils import squad_normalize_answer

    return squad_normalize_answer(text)


_TRIVIAQA_PUNCT = frozenset(string.punctuation + "\u2018\u2019\u00b4`")


def triviaqa_normalize_answer(text: str) -> str:
    """TriviaQA's official ``normalize_answer`` (triviaqa_evaluation.py): ``_`` -> space, lower case,
    punctuation (ASCII and ‘ ’ ´ `) replaced by a space, articles a/an/the removed, whitespace collapsed."""
    t = text.replace("_", " ").lower()
    t = "".join(" " if ch in _TRIVIAQA_PUNCT else ch for ch in t)
    t = re.sub(r"\b(a|an|the)\b", " ", t)
    return " ".join(t.split()).strip()


def exact_match(prediction: str, golds: Sequence[str], normalize) -> float:
    """1.0 when ``normalize(prediction)`` equals ``normalize(g)`` for a gold ``g``, else 0.0."""
    p = normalize(prediction)
    return float(any(p == normalize(g) for g in golds))


# --------------------------------------------------------------------------- open QA (NQ-open, TriviaQA)


def _qa_prompt(question: str) -> str:
    """The analysis' few-shot prompt (``eavss.hallucination.prompts``): ``qa`` prefix + ``Q: {q}?\\nA:``."""
    from eavss.hallucination.prompts import qa_prompt

    return qa_prompt(question).text


def _open_qa_docs(source: str, data_dir=None, splits=None, part="eval", limit=None) -> list[dict]:
    items = _source_items(source, data_dir)
    ids = _take(part_ids(source, list(items), splits, part), limit)
    return [{"qid": q, "question": items[q].question, "answers": list(items[q].golds)} for q in ids]


def load_nq_open_eval(data_dir: str | None = None, splits: str | None = None, part: str = "eval",
                      limit: int | None = None, **_: Any):
    """lm-eval ``custom_dataset`` of ``eavss_nq_open``: ``{"test": [{qid, question, answers}]}``."""
    return _dataset(_open_qa_docs("nq_open", data_dir, splits, part, limit))


def load_triviaqa_eval(data_dir: str | None = None, splits: str | None = None, part: str = "eval",
                       limit: int | None = None, **_: Any):
    """lm-eval ``custom_dataset`` of ``eavss_triviaqa``: answers = value + aliases + normalised aliases."""
    return _dataset(_open_qa_docs("triviaqa", data_dir, splits, part, limit))


def open_qa_doc_to_text(doc: dict) -> str:
    """The analysis prompt: the ``qa`` few-shot prefix, then ``Q: {question}?\\nA:``."""
    return _qa_prompt(doc["question"])


def open_qa_doc_to_target(doc: dict) -> str:
    """First gold answer (only for few-shot examples, which these tasks do not use)."""
    return " " + doc["answers"][0]


def nq_open_process_results(doc: dict, results: Sequence[str]) -> dict[str, float]:
    """``em``: NQ-open exact match of the greedy answer (text before the first newline)."""
    return {"em": exact_match(results[0].split("\n", 1)[0], doc["answers"], nq_normalize_answer)}


def triviaqa_process_results(doc: dict, results: Sequence[str]) -> dict[str, float]:
    """``em``: TriviaQA exact match of the greedy answer (official normaliser, all aliases)."""
    return {"em": exact_match(results[0].split("\n", 1)[0], doc["answers"], triviaqa_normalize_answer)}


# --------------------------------------------------------------------------- SciQ


def load_sciq_mc_eval(data_dir: str | None = None, splits: str | None = None, part: str = "eval",
                      limit: int | None = None, options: dict | None = None, **_: Any):
    """lm-eval ``custom_dataset`` of ``eavss_sciq_mc``: ``{qid, question, support, choices, gold}``,
    choices in lm-eval's order (distractor1..3, correct), gold = 3. The support paragraph is kept
    only when ``options["support"]``."""
    from eavss.data.paths import data_file
    from eavss.data.qa import SCIQ_ARROW, _read_arrow, stable_id

    support = {}
    if (options or {}).get("support"):
        for r in _read_arrow(data_file(data_dir, SCIQ_ARROW)):
            q = r["question"].strip()
            support[stable_id("sciq", q + "\n" + r["correct_answer"].strip())] = (r.get("support") or "").strip()
    items = _source_items("sciq", data_dir)
    ids = _take(part_ids("sciq", list(items), splits, part), limit)
    docs = []
    for q in ids:
        it = items[q]
        docs.append({"qid": q, "question": it.question, "support": support.get(q, ""),
                     "choices": [it.options[1], it.options[2], it.options[3], it.options[0]], "gold": 3})
    return _dataset(docs)


def sciq_doc_to_text(doc: dict) -> str:
    """``Question: {q}\\nAnswer:`` (lm-eval's sciq prompt without the support paragraph, unless kept)."""
    head = f"{doc['support']}\n" if doc.get("support") else ""
    return f"{head}Question: {doc['question']}\nAnswer:"


# --------------------------------------------------------------------------- TruthfulQA


def _truthfulqa_mc(data_dir, mc_file: str) -> dict[str, dict]:
    from eavss.data.paths import data_file
    from eavss.errors import EavssError

    if mc_file not in TRUTHFULQA_MC:
        raise EavssError(f"unknown TruthfulQA mc_file {mc_file!r}; choose one of {', '.join(TRUTHFULQA_MC)}")
    path = data_file(data_dir, TRUTHFULQA_MC[mc_file])
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise EavssError(f"{path} is not the TruthfulQA mc_task.json ({exc}); restore it from shared/data") from None
    return {" ".join(r["question"].split()): r for r in rows}


def truthfulqa_mc_docs(data_dir=None, splits=None, part="eval", limit=None, mc_file="current") -> tuple[list[dict], int]:
    """TruthfulQA MC docs of the part: ``{qid, question, mc1_choices, mc1_gold, mc2_choices, mc2_labels}``.

    Questions are matched to ``TruthfulQA.csv`` (whose ids the split uses) by their text.

    Returns:
        ``(docs, n_unmatched)``: questions of the part with no MC entry are left out and counted.
    """
    items = _source_items("truthfulqa", data_dir)
    mc = _truthfulqa_mc(data_dir, mc_file)
    ids = part_ids("truthfulqa", list(items), splits, part)
    docs, unmatched = [], 0
    for q in ids:
        row = mc.get(" ".join(items[q].question.split()))
        if row is None:
            unmatched += 1
            continue
        c1, l1 = list(row["mc1_targets"]), list(row["mc1_targets"].values())
        c2, l2 = list(row["mc2_targets"]), [int(v) for v in row["mc2_targets"].values()]
        docs.append({"qid": q, "question": items[q].question, "mc1_choices": c1, "mc1_gold": l1.index(1),
                     "mc2_choices": c2, "mc2_labels": l2})
    return _take(docs, limit), unmatched


def load_truthfulqa_mc_eval(data_dir: str | None = None, splits: str | None = None, part: str = "eval",
                            limit: int | None = None, options: dict | None = None, **_: Any):
    """lm-eval ``custom_dataset`` of ``eavss_truthfulqa_mc1`` / ``_mc2`` (see :func:`truthfulqa_mc_docs`)."""
    docs, _ = truthfulqa_mc_docs(data_dir, splits, part, limit, (options or {}).get("mc_file", "current"))
    return _dataset(docs)


def truthfulqa_doc_to_text(doc: dict) -> str:
    """lm-eval's truthfulqa prompt: the six-shot QA primer, then ``\\n\\nQ: {question}\\nA:``."""
    return QA_PRIMER + "\n\nQ: " + doc["question"] + "\nA:"


def truthfulqa_mc2_process_results(doc: dict, results) -> dict[str, float]:
    """lm-eval's ``process_results_mc2``: probability mass of the true answers, normalised over all choices."""
    import numpy as np

    ll = np.array([r[0] for r in results], dtype=np.float64)
    probs = np.exp(ll - ll.max())  # the same ratio as exp(ll) / sum exp(ll), without underflow
    probs = probs / probs.sum()
    labels = np.array(doc["mc2_labels"])
    return {"acc": float(probs[labels == 1].sum())}


def _with_period(answers: Sequence[str]) -> list[str]:
    out = []
    for a in answers:
        a = a.strip()
        if a:
            out.append(a if a.endswith(".") else a + ".")
    return out


def load_truthfulqa_gen_eval(data_dir: str | None = None, splits: str | None = None, part: str = "eval",
                             limit: int | None = None, **_: Any):
    """lm-eval ``custom_dataset`` of ``eavss_truthfulqa_gen``: ``{qid, question, correct_answers,
    incorrect_answers}`` as lm-eval's ``process_docs_gen`` prepares them (a final "." added where
    missing; "I have no comment." among the correct answers)."""
    items = _source_items("truthfulqa", data_dir)
    ids = _take(part_ids("truthfulqa", list(items), splits, part), limit)
    docs = []
    for q in ids:
        it = items[q]
        correct = _with_period(it.golds)
        if "I have no comment." not in correct:
            correct.append("I have no comment.")
        docs.append({"qid": q, "question": it.question, "correct_answers": correct,
                     "incorrect_answers": _with_period(it.incorrect)})
    return _dataset(docs)


def _bleu(ref: str, pred: str) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu([pred], [[ref]], smooth_method="exp", smooth_value=0.0, force=False, lowercase=False,
                                 tokenize="intl", use_effective_order=False).score


_ROUGE = None


def _rouge_l(ref: str, pred: str) -> float:
    global _ROUGE
    from rouge_score import rouge_scorer

    if _ROUGE is None:
        _ROUGE = rouge_scorer.RougeScorer(["rougeLsum"])
    return _ROUGE.score(ref.replace(" . ", ".\n"), pred.replace(" . ", ".\n"))["rougeLsum"].fmeasure * 100


def truthfulqa_gen_process_results(doc: dict, results: Sequence[str]) -> dict[str, float]:
    """lm-eval's truthfulqa_gen judge (BLEU and ROUGE-L parts): ``bleu_acc`` / ``rougeL_acc`` = 1 when
    the best-matching true reference scores higher than the best-matching false one; ``*_max`` = best
    true score, ``*_diff`` = best true minus best false (0-100 scale)."""
    import numpy as np

    completion = results[0].split("\n", 1)[0].strip()
    true_refs, false_refs = doc["correct_answers"], doc["incorrect_answers"]
    out: dict[str, float] = {}
    for name, fn in (("bleu", _bleu), ("rougeL", _rouge_l)):
        t = float(np.nanmax([fn(r, completion) for r in true_refs]))
        f = float(np.nanmax([fn(r, completion) for r in false_refs])) if false_refs else float("-inf")
        out[f"{name}_max"] = t
        out[f"{name}_diff"] = t - f if false_refs else t
        out[f"{name}_acc"] = float(t > f)
    return out


# --------------------------------------------------------------------------- WikiQA


def wikiqa_eval_records(data_dir=None, splits=None, part="eval") -> tuple[list, int, int]:
    """WikiQA questions (dev + test) of the part, in split-hash order.

    Returns:
        ``(records with a correct candidate, n_excluded_no_correct, n_all_correct)``: questions with
        no correct candidate have no answer to rank and are excluded and counted (Yang et al. 2015);
        questions whose every candidate is correct stay (their AP and RR are 1).
    """
    from eavss.data.qa import WIKIQA_SPLITS
    from eavss.data.wikiqa import load_wikiqa

    records = {r.qid: r for split in WIKIQA_SPLITS for r in load_wikiqa(split, data_dir)}
    ids = part_ids("wikiqa", list(records), splits, part)
    kept = [records[q] for q in ids if records[q].has_correct]
    return kept, len(ids) - len(kept), sum(all(r.labels) for r in kept)


def load_wikiqa_eval(data_dir: str | None = None, splits: str | None = None, part: str = "eval",
                     limit: int | None = None, **_: Any):
    """lm-eval ``custom_dataset`` of ``eavss_wikiqa``: ``{qid, question, candidates, labels, gold}``."""
    kept, _, _ = wikiqa_eval_records(data_dir, splits, part)
    docs = [{"qid": r.qid, "question": " ".join(r.question.split()), "candidates": list(r.candidates),
             "labels": [int(y) for y in r.labels], "gold": r.labels.index(1)} for r in _take(kept, limit)]
    return _dataset(docs)


def wikiqa_doc_to_text(doc: dict) -> str:
    """``Q: {question}?\\nA:`` (zero-shot; candidates are whole sentences, not short answers)."""
    from eavss.hallucination.prompts import QUESTION_TEMPLATE, question_text

    return QUESTION_TEMPLATE.format(question=question_text(doc["question"]))


def wikiqa_process_results(doc: dict, results) -> dict[str, float]:
    """AP and RR of the question (:mod:`eavss.evaluation.ranking`, stable ties): ``map``/``mrr`` by
    log-likelihood per character of the candidate, ``map_sum``/``mrr_sum`` by summed log-likelihood."""
    from eavss.evaluation.ranking import average_precision, reciprocal_rank

    ll = [float(r[0]) for r in results]
    per_char = [v / max(1, len(c)) for v, c in zip(ll, doc["candidates"])]
    y = doc["labels"]
    return {"map": average_precision(per_char, y), "mrr": reciprocal_rank(per_char, y),
            "map_sum": average_precision(ll, y), "mrr_sum": reciprocal_rank(ll, y)}
