"""Deterministic score / train / eval splits per source, without leakage.

A question's part depends only on (seed, source, question id)::

    u = int(sha256(f"{seed}:{source}:{qid}")[:16 hex], 16) / 2**64          # uniform in [0, 1)
    part = "score" if u < f_score else "train" if u < f_score + f_train else "eval"

so the assignment is stable when a source gains or loses questions, needs no stored state, and a
later step (training, evaluation) that recomputes it -- or reads ``splits.json`` -- excludes exactly
the ids scored here. Questions used here are the first ``limit`` ids of the score part in ``u``
order (a seeded random subset, not the file's order, which is sorted by category in TruthfulQA).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from eavss.errors import EavssError

PARTS = ("score", "train", "eval")
SPLITS_VERSION = 1


def unit_hash(seed: int, source: str, qid: str) -> float:
    """The uniform ``[0, 1)`` number of one question (see the module doc)."""
    h = hashlib.sha256(f"{seed}:{source}:{qid}".encode("utf-8")).hexdigest()
    return int(h[:16], 16) / 2.0**64


def assign_part(seed: int, source: str, qid: str, fractions: Sequence[float]) -> str:
    """``"score"`` | ``"train"`` | ``"eval"`` for one question; ``fractions`` = (score, train, eval)."""
    u = unit_hash(seed, source, qid)
    f_score, f_train = fractions[0], fractions[1]
    if u < f_score:
        return "score"
    return "train" if u < f_score + f_train else "eval"


def split_source(source: str, qids: Sequence[str], seed: int, fractions: Sequence[float]) -> dict[str, list[str]]:
    """Split one source's ids. Returns ``{part: [ids in u order]}`` for the three parts.

    Raises:
        EavssError: repeated ids, or fractions that are negative or do not sum to 1.
    """
    if len(set(qids)) != len(qids):
        raise EavssError(f"source {source} has repeated question ids; ids must be unique to split without leakage")
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise EavssError(f"split fractions must be >= 0 and sum to 1, got {list(fractions)}")
    keyed = sorted(((unit_hash(seed, source, q), q) for q in qids))
    out: dict[str, list[str]] = {p: [] for p in PARTS}
    for u, q in keyed:
        part = "score" if u < fractions[0] else "train" if u < fractions[0] + fractions[1] else "eval"
        out[part].append(q)
    return out


def check_disjoint(splits: dict) -> None:
    """Assert that, per source, the three parts are pairwise disjoint and ``used_here`` is inside ``score``.

    Args:
        splits: the ``splits.json`` dict (``{"sources": {name: {"parts": {...}, "used_here": [...]}}}``).

    Raises:
        EavssError: an id is in two parts, or a used id is not in the score part.
    """
    for src, d in splits["sources"].items():
        parts = {p: set(d["parts"][p]) for p in PARTS}
        for i, a in enumerate(PARTS):
            for b in PARTS[i + 1:]:
                both = parts[a] & parts[b]
                if both:
                    raise EavssError(f"splits leak: source {src} has {len(both)} ids in both {a} and {b} (e.g. {sorted(both)[0]})")
        extra = set(d.get("used_here", [])) - parts["score"]
        if extra:
            raise EavssError(f"splits leak: source {src} used {len(extra)} ids outside its score part (e.g. {sorted(extra)[0]})")


def build_splits(items_by_source: dict, seed: int, fractions: Sequence[float], used: dict[str, list[str]]) -> dict:
    """The ``splits.json`` content.

    Args:
        items_by_source: ``{source: [QAItem]}`` (all questions of each source).
        seed: split seed. fractions: (score, train, eval).
        used: ``{source: [ids used for scoring in this run]}``.

    Returns:
        ``{"version", "seed", "fractions", "rule", "sources": {source: {"n_questions", "counts",
        "parts": {part: [ids]}, "used_here": [ids], "n_used_here"}}}``; checked with
        :func:`check_disjoint`.
    """
    out = {
        "version": SPLITS_VERSION, "seed": seed,
        "fractions": dict(zip(PARTS, [float(f) for f in fractions])),
        "rule": "u = int(sha256(f'{seed}:{source}:{qid}').hexdigest()[:16], 16) / 2**64; "
                "score if u < f_score, train if u < f_score + f_train, else eval; ids listed in u order; "
                "used_here = the first `limit` ids of the score part",
        "sources": {},
    }
    for src, items in items_by_source.items():
        parts = split_source(src, [it.qid for it in items], seed, fractions)
        u = list(used.get(src, []))
        out["sources"][src] = {"n_questions": len(items), "counts": {p: len(v) for p, v in parts.items()},
                               "parts": parts, "used_here": u, "n_used_here": len(u)}
    check_disjoint(out)
    return out


def load_splits(path: str | Path) -> dict:
    """Read and check a ``splits.json`` (e.g. from a later training step that must exclude these ids).

    Raises:
        EavssError: missing/unreadable file, or overlapping parts.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "splits.json"
    if not p.is_file():
        raise EavssError(f"{p} not found; pass the --out folder of `eavss hallucination` or its splits.json")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise EavssError(f"{p} is not valid JSON; re-run `eavss hallucination`") from None
    if "sources" not in d:
        raise EavssError(f"{p} is not an eavss splits.json (no 'sources' key)")
    check_disjoint(d)
    return d


def excluded_ids(splits: dict, source: str, parts: Sequence[str] = ("score",)) -> set[str]:
    """Ids of ``source`` in ``parts`` (default: everything this command may have scored)."""
    d = splits["sources"].get(source)
    if d is None:
        return set()
    return set().union(*(set(d["parts"][p]) for p in parts))
