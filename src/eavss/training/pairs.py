"""Contrastive training examples from QA items: question, a truthful answer, hallucinated answers.

An *item* is any object with the attributes ``question`` (str), ``golds`` (list of correct
answers, best first) and ``incorrect`` (list of hallucinated / wrong answers); ``qid``,
``source``, ``options`` and ``correct`` are used when present (``eavss.hallucination.sources.QAItem``
has them all; :class:`QARecord` is a minimal one). Where the negatives come from:

==============  ======================================================================
source          positives / negatives
==============  ======================================================================
TruthfulQA      ``Best Answer`` (+ ``Correct Answers``) / ``Incorrect Answers``
HaluEval QA     ``right_answer`` / ``hallucinated_answer`` (ChatGPT-written)
SciQ            ``correct_answer`` / the three distractors (``options`` minus ``correct``
                when ``incorrect`` is empty)
WikiQA          candidate sentences labelled 1 / labelled 0 (:func:`wikiqa_items`)
the model       its own wrong answers, ``own_wrong_answers=[(qid, answer), ...]``
==============  ======================================================================

Each example is one (question, positive, negatives) triple; the pipeline is
:func:`build_contrastive_examples` (texts) -> :func:`tokenize_examples` (token ids with a prompt
template) -> :func:`collate_contrastive` (padded tensors and masks for
:func:`eavss.training.contrastive.contrastive_loss_fn`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from eavss.errors import EavssError

DEFAULT_PROMPT_TEMPLATE = "Q: {question}\nA:"
"""The question prompt (the NQ-open ``Q:``/``A:`` convention used by ``eavss hallucination``)."""
DEFAULT_ANSWER_TEMPLATE = " {answer}"
"""The answer as appended after the prompt (one leading space, as the model would generate it)."""


@dataclass
class QARecord:
    """A minimal QA item: ``question``, ``golds`` (correct answers), ``incorrect`` (wrong answers)."""

    qid: str
    question: str
    golds: list[str] = field(default_factory=list)
    incorrect: list[str] = field(default_factory=list)
    source: str | None = None


@dataclass
class ContrastiveExample:
    """One training example.

    Attributes:
        qid: the item's id (None when it has none). source: the item's source (or None).
        question: question text. positive: one truthful answer.
        negatives: hallucinated answers (1 or more). negative_origins: per negative,
            ``"reference"`` (from the dataset) or ``"own"`` (the model's own wrong answer).
    """

    qid: str | None
    source: str | None
    question: str
    positive: str
    negatives: list[str]
    negative_origins: list[str]


@dataclass
class TokenizedExample:
    """Token ids of one example: ``prompt_ids``, ``positive_ids``, ``negative_ids`` (one list per negative)."""

    qid: str | None
    prompt_ids: list[int]
    positive_ids: list[int]
    negative_ids: list[list[int]]


def _norm(text: str) -> str:
    """Comparison key: case-folded, whitespace collapsed, one trailing period removed."""
    t = " ".join(str(text).split()).casefold()
    return t[:-1].rstrip() if t.endswith(".") else t


def _clean(text: str, strip_trailing_period: bool) -> str:
    t = " ".join(str(text).split())
    if strip_trailing_period and t.endswith(".") and not t.endswith(".."):
        t = t[:-1].rstrip()
    return t


def wikiqa_items(records: Iterable[Any]) -> list[QARecord]:
    """WikiQA questions as items: candidates labelled 1 are golds, labelled 0 are incorrect.

    Args:
        records: objects with ``qid``, ``question``, ``candidates`` (list[str]) and ``labels``
            (list[int], 0/1), e.g. from :func:`eavss.data.wikiqa.load_wikiqa`.

    Returns:
        list of :class:`QARecord` (``source="wikiqa"``), in input order. Questions without a correct
        candidate keep ``golds=[]`` (:func:`build_contrastive_examples` skips and counts them).

    Raises:
        EavssError: a record whose candidates and labels differ in length.
    """
    out = []
    for r in records:
        if len(r.candidates) != len(r.labels):
            raise EavssError(f"WikiQA question {r.qid}: {len(r.candidates)} candidates but {len(r.labels)} labels")
        golds = [c for c, y in zip(r.candidates, r.labels) if int(y) == 1]
        wrong = [c for c, y in zip(r.candidates, r.labels) if int(y) != 1]
        out.append(QARecord(qid=str(r.qid), question=r.question, golds=golds, incorrect=wrong, source="wikiqa"))
    return out


def _item_negatives(item: Any) -> list[str]:
    wrong = list(getattr(item, "incorrect", None) or [])
    if not wrong:
        options, correct = getattr(item, "options", None), getattr(item, "correct", None)
        if options and correct is not None:
            wrong = [o for o in options if _norm(o) != _norm(correct)]
    return wrong


def build_contrastive_examples(
    items: Iterable[Any],
    *,
    own_wrong_answers: Iterable[tuple[str, str]] | None = None,
    max_positives: int = 1,
    max_negatives: int | None = 4,
    strip_trailing_period: bool = True,
) -> tuple[list[ContrastiveExample], dict]:
    """(question, truthful answer, hallucinated answers) examples from QA items.

    For each item: positives = ``golds`` (first ``max_positives``, file order: the first gold is the
    curated best answer in TruthfulQA); negatives = the model's own wrong answers for the item's
    ``qid`` (first, in the order given: they are the errors this model actually makes) then the
    item's ``incorrect`` answers (SciQ: the distractors), the first ``max_negatives``. Texts get
    whitespace collapsed and, by default, one trailing period stripped — HaluEval's hallucinated
    answers end in "." and its right answers do not, a surface cue the model could learn instead of
    truthfulness (the same rule as ``eavss hallucination``). Negatives are de-duplicated, and a
    negative equal to a gold (case-folded, whitespace and final period ignored) is dropped. One
    example per positive; each gets all the item's negatives. Items with no positive or no negative
    are skipped and counted.

    Args:
        items: objects with ``question``, ``golds``, ``incorrect`` (optional ``qid``, ``source``,
            ``options``, ``correct``).
        own_wrong_answers: ``(qid, answer)`` pairs of the model's own wrong answers, or None.
        max_positives: positives (examples) per item, >= 1. Default 1: extra golds of TruthfulQA
            are often partial paraphrases of the best answer.
        max_negatives: negatives per example, >= 1, or None for all. Default 4 bounds the forward
            passes per example (1 + K sequences; TruthfulQA has 1-12 incorrect answers).
        strip_trailing_period: remove one final "." from every answer (default True).

    Returns:
        (examples, stats): the examples in item order, and counts ``items``, ``examples``,
        ``skipped_no_positive``, ``skipped_no_negative``, ``negatives_dropped_equal_gold``,
        ``own_answers_used``, ``own_answers_unmatched`` (qids not among the items),
        ``negatives_per_example`` (mean).

    Raises:
        EavssError: ``max_positives`` < 1, ``max_negatives`` < 1, an item without ``question`` /
            ``golds``, or own answers given while items have no ``qid``.
    """
    if isinstance(max_positives, bool) or not isinstance(max_positives, int) or max_positives < 1:
        raise EavssError(f"max_positives={max_positives!r} must be an integer >= 1")
    if max_negatives is not None and (isinstance(max_negatives, bool) or not isinstance(max_negatives, int)
                                      or max_negatives < 1):
        raise EavssError(f"max_negatives={max_negatives!r} must be an integer >= 1 or None (all)")
    own: dict[str, list[str]] = {}
    for rec in own_wrong_answers or []:
        try:
            qid, answer = rec
        except (TypeError, ValueError):
            raise EavssError(f"own_wrong_answers entry {rec!r} is not a (qid, answer) pair") from None
        own.setdefault(str(qid), []).append(answer)

    stats = {"items": 0, "examples": 0, "skipped_no_positive": 0, "skipped_no_negative": 0,
             "negatives_dropped_equal_gold": 0, "own_answers_used": 0, "own_answers_unmatched": 0}
    seen_qids: set[str] = set()
    examples: list[ContrastiveExample] = []
    for item in items:
        stats["items"] += 1
        if not hasattr(item, "question") or not hasattr(item, "golds"):
            raise EavssError(f"item {item!r} has no question/golds attributes; pass objects like eavss.training.pairs.QARecord")
        qid = getattr(item, "qid", None)
        qid = None if qid is None else str(qid)
        if own and qid is None:
            raise EavssError("own_wrong_answers needs items with a qid attribute to match them")
        if qid is not None:
            seen_qids.add(qid)
        golds = [g for g in (_clean(g, strip_trailing_period) for g in item.golds or []) if g]
        gold_keys = {_norm(g) for g in golds}
        candidates = [(a, "own") for a in own.get(qid, [])] + [(a, "reference") for a in _item_negatives(item)]
        negs: list[str] = []
        origins: list[str] = []
        keys: set[str] = set()
        for text, origin in candidates:
            t = _clean(text, strip_trailing_period)
            k = _norm(t)
            if not t or k in keys:
                continue
            if k in gold_keys:
                stats["negatives_dropped_equal_gold"] += 1
                continue
            keys.add(k)
            negs.append(t)
            origins.append(origin)
        if max_negatives is not None:
            negs, origins = negs[:max_negatives], origins[:max_negatives]
        if not golds:
            stats["skipped_no_positive"] += 1
            continue
        if not negs:
            stats["skipped_no_negative"] += 1
            continue
        stats["own_answers_used"] += origins.count("own")
        for pos in list(dict.fromkeys(golds))[:max_positives]:
            examples.append(ContrastiveExample(qid=qid, source=getattr(item, "source", None),
                                               question=" ".join(str(item.question).split()),
                                               positive=pos, negatives=list(negs), negative_origins=list(origins)))
    stats["own_answers_unmatched"] = sum(len(v) for q, v in own.items() if q not in seen_qids)
    stats["examples"] = len(examples)
    stats["negatives_per_example"] = (sum(len(e.negatives) for e in examples) / len(examples)) if examples else 0.0
    return examples, stats


def _render(template: str | Callable[[str], str], value: str, key: str) -> str:
    if callable(template):
        return template(value)
    if "{" + key + "}" not in template:
        raise EavssError(f"template {template!r} has no {{{key}}} placeholder; pass e.g. 'Q: {{question}}\\nA:'")
    return template.replace("{" + key + "}", value)


def tokenize_examples(
    examples: Sequence[ContrastiveExample],
    tokenizer: Any,
    prompt_template: str | Callable[[str], str] = DEFAULT_PROMPT_TEMPLATE,
    answer_template: str | Callable[[str], str] = DEFAULT_ANSWER_TEMPLATE,
    *,
    max_length: int = 256,
    add_special_tokens: bool = True,
    append_eos: bool = False,
) -> list[TokenizedExample]:
    """Token ids of the prompt and of each answer, tokenised separately (the boundary is exact).

    The prompt is ``prompt_template`` with ``{question}`` replaced (or ``prompt_template(question)``
    when callable; put any few-shot prefix in the template), tokenised with the tokenizer's special
    tokens (BOS where the tokenizer adds one) when ``add_special_tokens``; each answer is
    ``answer_template`` with ``{answer}`` replaced, tokenised without special tokens, plus EOS when
    ``append_eos``. A model reads ``prompt_ids + answer_ids``. Too long (> ``max_length`` tokens):
    the answer keeps its first ``max_length // 2`` tokens at most and the prompt its last tokens
    (the question is at the end of the prompt; a few-shot prefix or BOS may be cut).

    Args:
        examples: from :func:`build_contrastive_examples`.
        tokenizer: a Hugging Face tokenizer (``tokenizer(text, add_special_tokens=...)["input_ids"]``).
        prompt_template, answer_template: strings with ``{question}`` / ``{answer}``, or callables.
        max_length: tokens per sequence (>= 2). add_special_tokens: for the prompt. append_eos: add
            ``tokenizer.eos_token_id`` after every answer (default False: answers are compared as
            text; EOS would be a shared token in every answer).

    Returns:
        list of :class:`TokenizedExample` (same order). An answer that tokenises to nothing is
        dropped (an example whose positive or every negative is empty is dropped).

    Raises:
        EavssError: a template without its placeholder, ``max_length`` < 2, ``append_eos`` with a
            tokenizer that has no EOS.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise EavssError(f"max_length={max_length!r} must be an integer >= 2")
    eos = getattr(tokenizer, "eos_token_id", None)
    if append_eos and eos is None:
        raise EavssError("append_eos=True but the tokenizer has no eos_token_id; pass append_eos=False")

    def enc_answer(text: str) -> list[int]:
        ids = list(tokenizer(_render(answer_template, text, "answer"), add_special_tokens=False)["input_ids"])
        if append_eos and ids:
            ids.append(int(eos))
        return ids[: max_length // 2]

    out = []
    for ex in examples:
        prompt = list(tokenizer(_render(prompt_template, ex.question, "question"),
                                add_special_tokens=add_special_tokens)["input_ids"])
        pos = enc_answer(ex.positive)
        negs = [ids for ids in (enc_answer(n) for n in ex.negatives) if ids]
        if not pos or not negs or not prompt:
            continue
        longest = max(len(pos), *(len(n) for n in negs))
        room = max_length - longest
        if len(prompt) > room:
            prompt = prompt[len(prompt) - room:]
        out.append(TokenizedExample(qid=ex.qid, prompt_ids=prompt, positive_ids=pos, negative_ids=negs))
    return out


def _pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int, padding_side: str) -> dict[str, torch.Tensor]:
    """(prompt_ids, answer_ids) rows -> input_ids, attention_mask, answer_mask, prompt_mask (N, T)."""
    t = max(len(p) + len(a) for p, a in rows)
    n = len(rows)
    input_ids = torch.full((n, t), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((n, t), dtype=torch.long)
    answer_mask = torch.zeros((n, t), dtype=torch.bool)
    prompt_mask = torch.zeros((n, t), dtype=torch.bool)
    for r, (p, a) in enumerate(rows):
        length = len(p) + len(a)
        start = 0 if padding_side == "right" else t - length
        input_ids[r, start:start + length] = torch.tensor(p + a, dtype=torch.long)
        attention_mask[r, start:start + length] = 1
        prompt_mask[r, start:start + len(p)] = True
        answer_mask[r, start + len(p):start + length] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "answer_mask": answer_mask,
            "prompt_mask": prompt_mask}


def _check_pad(pad_id: Any, padding_side: str) -> None:
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise EavssError(f"pad_id={pad_id!r} must be a token id (int >= 0); pass tokenizer.pad_token_id")
    if padding_side not in ("right", "left"):
        raise EavssError(f"padding_side={padding_side!r}; choose right or left")


def collate_contrastive(examples: Sequence[TokenizedExample], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a list of tokenised examples into one batch for :func:`contrastive_loss_fn`.

    Every sequence (each example's positive, then its negatives) is one row: ``N = B + sum_b K_b``
    rows of ``prompt_ids + answer_ids``, padded to the longest row with ``pad_id``.

    Args:
        examples: B >= 1 tokenised examples. pad_id: the padding token id (masked out everywhere).
        padding_side: "right" (default) or "left"; the masks and position ids make both give the
            same representations.

    Returns:
        dict of tensors: ``input_ids`` (N, T) long, ``attention_mask`` (N, T) long 0/1,
        ``answer_mask`` (N, T) bool, ``prompt_mask`` (N, T) bool, ``positive_index`` (B,) long (row
        of each example's positive), ``negative_index`` (B, K) long (rows of its negatives; padding
        slots point at row 0), ``negative_mask`` (B, K) bool (True = a real negative),
        K = max_b K_b.

    Raises:
        EavssError: empty list, bad ``pad_id`` or ``padding_side``.
    """
    if not examples:
        raise EavssError("collate_contrastive got no examples; pass a non-empty list")
    _check_pad(pad_id, padding_side)
    rows: list[tuple[list[int], list[int]]] = []
    k = max(len(ex.negative_ids) for ex in examples)
    positive_index = torch.zeros(len(examples), dtype=torch.long)
    negative_index = torch.zeros((len(examples), k), dtype=torch.long)
    negative_mask = torch.zeros((len(examples), k), dtype=torch.bool)
    for b, ex in enumerate(examples):
        positive_index[b] = len(rows)
        rows.append((ex.prompt_ids, ex.positive_ids))
        for j, neg in enumerate(ex.negative_ids):
            negative_index[b, j] = len(rows)
            negative_mask[b, j] = True
            rows.append((ex.prompt_ids, neg))
    batch = _pad_rows(rows, pad_id, padding_side)
    batch.update(positive_index=positive_index, negative_index=negative_index, negative_mask=negative_mask)
    return batch


def collate_positives(examples: Sequence[TokenizedExample], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Only the truthful sequences (``prompt + positive``) as a batch, for LM training on answers.

    Returns:
        dict: ``input_ids``, ``attention_mask``, ``answer_mask``, ``prompt_mask`` (B, T) as in
        :func:`collate_contrastive`; use with :func:`eavss.training.contrastive.lm_loss_fn`.

    Raises:
        EavssError: empty list, bad ``pad_id`` or ``padding_side``.
    """
    if not examples:
        raise EavssError("collate_positives got no examples; pass a non-empty list")
    _check_pad(pad_id, padding_side)
    return _pad_rows([(ex.prompt_ids, ex.positive_ids) for ex in examples], pad_id, padding_side)

