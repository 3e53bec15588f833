"""eavss.training.pairs: examples from QA items of every source kind, tokenisation, padded batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from eavss.errors import EavssError
from eavss.testing import tiny_tokenizer
from eavss.training.pairs import (
    QARecord,
    build_contrastive_examples,
    collate_contrastive,
    collate_positives,
    tokenize_examples,
    wikiqa_items,
)


@dataclass
class Item:  # the shape of eavss.hallucination.sources.QAItem, without importing it
    source: str
    qid: str
    question: str
    golds: list[str] = field(default_factory=list)
    incorrect: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    correct: str | None = None


def test_sources_positives_and_negatives():
    items = [
        Item("truthfulqa", "t1", "What happens if you eat watermelon seeds?",
             ["Nothing happens.", "You digest them."], ["You grow watermelons in your stomach.", "You get sick.",
                                                       "You die.", "You dream.", "You fly."]),
        Item("halueval", "h1", "Which band was formed first?", ["Muse"], ["Coldplay formed first."]),
        Item("sciq", "s1", "What do plants take in?", ["carbon dioxide"], [],
             options=["carbon dioxide", "oxygen", "helium", "nitrogen"], correct="carbon dioxide"),
        Item("nq_open", "n1", "Who is it?", ["Bob"], []),  # no negative
    ]
    examples, stats = build_contrastive_examples(items)
    assert [e.qid for e in examples] == ["t1", "h1", "s1"]
    t, h, s = examples
    assert t.positive == "Nothing happens" and len(t.negatives) == 4  # max_negatives default 4, file order
    assert t.negatives[0] == "You grow watermelons in your stomach"
    assert h.positive == "Muse" and h.negatives == ["Coldplay formed first"]  # trailing period stripped
    assert s.negatives == ["oxygen", "helium", "nitrogen"]  # SciQ distractors
    assert stats["skipped_no_negative"] == 1 and stats["examples"] == 3 and stats["items"] == 4

    all_pos, _ = build_contrastive_examples(items[:1], max_positives=2, max_negatives=None,
                                            strip_trailing_period=False)
    assert [e.positive for e in all_pos] == ["Nothing happens.", "You digest them."]
    assert len(all_pos[0].negatives) == 5 and all_pos[0].negatives[0].endswith(".")


def test_own_wrong_answers_first_deduplicated_and_gold_dropped():
    items = [QARecord("q1", "Capital of France?", ["Paris"], ["London", "Rome"]),
             QARecord("q2", "Capital of Italy?", ["Rome"], [])]
    own = [("q1", "Lyon"), ("q1", "london."), ("q1", "paris"), ("q2", "Milan"), ("q9", "x")]
    examples, stats = build_contrastive_examples(items, own_wrong_answers=own)
    e1, e2 = examples
    assert e1.negatives == ["Lyon", "london", "Rome"]  # own first; "London" duplicates "london."
    assert e1.negative_origins == ["own", "own", "reference"]
    assert e2.negatives == ["Milan"] and e2.negative_origins == ["own"]
    assert stats["negatives_dropped_equal_gold"] == 1  # "paris"
    assert stats["own_answers_used"] == 3 and stats["own_answers_unmatched"] == 1


def test_wikiqa_items():
    recs = [SimpleNamespace(qid="Q1", question="how are glacier caves formed?",
                            candidates=["A glacier cave is a cave.", "A partly submerged glacier cave."], labels=[0, 1]),
            SimpleNamespace(qid="Q2", question="what is x?", candidates=["nothing"], labels=[0])]
    items = wikiqa_items(recs)
    assert items[0].golds == ["A partly submerged glacier cave."] and items[0].incorrect == ["A glacier cave is a cave."]
    examples, stats = build_contrastive_examples(items)
    assert len(examples) == 1 and stats["skipped_no_positive"] == 1
    with pytest.raises(EavssError, match="labels"):
        wikiqa_items([SimpleNamespace(qid="Q", question="q", candidates=["a"], labels=[])])


def test_validation():
    with pytest.raises(EavssError, match="max_positives"):
        build_contrastive_examples([], max_positives=0)
    with pytest.raises(EavssError, match="max_negatives"):
        build_contrastive_examples([], max_negatives=0)
    with pytest.raises(EavssError, match="qid"):
        build_contrastive_examples([SimpleNamespace(question="q", golds=["a"], incorrect=["b"])],
                                   own_wrong_answers=[("x", "y")])
    with pytest.raises(EavssError, match="question/golds"):
        build_contrastive_examples([object()])


def test_tokenize_and_collate():
    tok = tiny_tokenizer()
    items = [QARecord("q1", "What is the capital of France?", ["Paris"], ["London", "Rome is"]),
             QARecord("q2", "Who wrote Hamlet?", ["William Shakespeare"], ["Dickens"])]
    examples, _ = build_contrastive_examples(items)
    tokd = tokenize_examples(examples, tok, "Question: {question}\nAnswer:", " {answer}")
    assert tokd[0].prompt_ids == tok("Question: What is the capital of France?\nAnswer:")["input_ids"]
    assert tokd[0].positive_ids == tok(" Paris", add_special_tokens=False)["input_ids"]
    batch = collate_contrastive(tokd, pad_id=tok.pad_token_id)
    n_rows = 1 + 2 + 1 + 1
    assert batch["input_ids"].shape[0] == n_rows
    assert batch["positive_index"].tolist() == [0, 3]
    assert batch["negative_index"].tolist() == [[1, 2], [4, 0]]
    assert batch["negative_mask"].tolist() == [[True, True], [True, False]]
    for r, (p, a) in enumerate([(tokd[0].prompt_ids, tokd[0].positive_ids), (tokd[0].prompt_ids, tokd[0].negative_ids[0]),
                                (tokd[0].prompt_ids, tokd[0].negative_ids[1]), (tokd[1].prompt_ids, tokd[1].positive_ids),
                                (tokd[1].prompt_ids, tokd[1].negative_ids[0])]):
        length = len(p) + len(a)
        assert batch["input_ids"][r, :length].tolist() == p + a
        assert (batch["input_ids"][r, length:] == tok.pad_token_id).all()
        assert batch["attention_mask"][r].sum() == length
        assert batch["prompt_mask"][r].nonzero().flatten().tolist() == list(range(len(p)))
        assert batch["answer_mask"][r].nonzero().flatten().tolist() == list(range(len(p), length))
    left = collate_contrastive(tokd, pad_id=tok.pad_token_id, padding_side="left")
    for key in ("input_ids", "attention_mask", "answer_mask", "prompt_mask"):
        for r in range(n_rows):
            assert left[key][r][left["attention_mask"][r].bool()].tolist() == batch[key][r][batch["attention_mask"][r].bool()].tolist()
    pos = collate_positives(tokd, pad_id=tok.pad_token_id)
    assert pos["input_ids"].shape[0] == 2 and torch.equal(pos["answer_mask"][1], batch["answer_mask"][3][: pos["answer_mask"].shape[1]])
    with pytest.raises(EavssError, match="pad_id"):
        collate_contrastive(tokd, pad_id=None)
    with pytest.raises(EavssError, match="no examples"):
        collate_contrastive([], pad_id=3)


def test_tokenize_options_truncation_and_callables():
    tok = tiny_tokenizer()
    examples, _ = build_contrastive_examples([QARecord("q", "What is the capital of France? " * 5, ["Paris " * 20],
                                                       ["London"])])
    tokd = tokenize_examples(examples, tok, lambda q: "Q: " + q + "\nA:", lambda a: " " + a, max_length=24,
                             append_eos=True)
    ex = tokd[0]
    assert len(ex.positive_ids) == 12 and len(ex.prompt_ids) + len(ex.positive_ids) <= 24
    assert ex.prompt_ids[-1:] == tok("\nA:", add_special_tokens=False)["input_ids"][-1:]  # the end is kept
    assert ex.negative_ids[0][-1] == tok.eos_token_id
    with pytest.raises(EavssError, match="placeholder"):
        tokenize_examples(examples, tok, "Q: no placeholder")
    with pytest.raises(EavssError, match="max_length"):
        tokenize_examples(examples, tok, max_length=1)
