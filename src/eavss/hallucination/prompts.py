"""Prompts: a fixed few-shot prefix and a per-question suffix, as token-id concatenation.

No chat template: a plain ``Q:``/``A:`` few-shot prompt (the NQ-open convention of
``docs``/evaluation notes: a short instruction, then ``Q: {q}?\\nA:``) works better for a 135M
model than the chat format and is the same for every source, so prompt format is not a
difference between the classes. The hand-written examples come from no dataset used here.

The model sees ``prefix_ids + suffix_ids (+ answer_ids)`` where each part is tokenised on its
own (the prefix with the tokenizer's special tokens, e.g. BOS; suffix and answer without). The
prefix is identical for all questions of a source, so its KV cache is computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIXES: dict[str, str] = {
    "qa": (
        "Answer each question with a short answer.\n\n"
        "Q: What is the capital of France?\nA: Paris\n\n"
        "Q: Who wrote the play Romeo and Juliet?\nA: William Shakespeare\n\n"
        "Q: How many legs does a spider have?\nA: eight\n\n"
    ),
    "qa_options": (
        "Answer each question with one of its options.\n\n"
        "Q: What gas do plants take in from the air to make sugar?\n"
        "Options: oxygen; carbon dioxide; nitrogen; helium\nA: carbon dioxide\n\n"
        "Q: Which organ pumps blood through the body?\n"
        "Options: lungs; liver; kidney; heart\nA: heart\n\n"
    ),
}
"""Few-shot prefixes by name."""

QUESTION_TEMPLATE = "Q: {question}\nA:"
OPTIONS_TEMPLATE = "Q: {question}\nOptions: {options}\nA:"
ANSWER_TEMPLATE = " {answer}"


def question_text(q: str) -> str:
    """The question with a final ``?`` (NQ-open questions have none), whitespace collapsed."""
    q = " ".join(q.split())
    return q if q.endswith("?") or q.endswith(".") or not q else q + "?"


@dataclass(frozen=True)
class Prompt:
    """A prompt: ``prefix`` name (key of :data:`PREFIXES`) and the question-specific ``suffix`` text."""

    prefix: str
    suffix: str

    @property
    def text(self) -> str:
        """The whole prompt as text (for the report)."""
        return PREFIXES[self.prefix] + self.suffix


def qa_prompt(question: str) -> Prompt:
    """``Q: {question}?\\nA:`` after the ``qa`` prefix."""
    return Prompt("qa", QUESTION_TEMPLATE.format(question=question_text(question)))


def options_prompt(question: str, options: list[str]) -> Prompt:
    """``Q: {question}\\nOptions: a; b; c; d\\nA:`` after the ``qa_options`` prefix."""
    return Prompt("qa_options", OPTIONS_TEMPLATE.format(question=question_text(question), options="; ".join(options)))


def describe_prompts() -> dict:
    """JSON-able record of every prompt part, for the report."""
    return {
        "format": "plain few-shot text, no chat template; model input = prefix_ids + suffix_ids (+ answer_ids), "
                  "each tokenised separately (prefix with the tokenizer's special tokens)",
        "prefixes": dict(PREFIXES),
        "question_template": QUESTION_TEMPLATE,
        "options_template": OPTIONS_TEMPLATE,
        "options_note": "SciQ with judge.sciq=options: the four options joined by '; ' in a per-question seeded random order",
        "answer_template": ANSWER_TEMPLATE,
        "answer_note": "teacher-forced answers are appended as ' {answer}' (one trailing period stripped); their tokens "
                       "are the counted ones",
        "question_mark": "a '?' is appended to questions that end in neither '?' nor '.'",
        "prefix_by_source": {"truthfulqa": "qa", "halueval": "qa", "nq_open": "qa", "triviaqa": "qa",
                             "sciq": "qa_options (judge.sciq=options) or qa (judge.sciq=open)"},
    }
