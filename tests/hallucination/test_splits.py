"""Score/train/eval splits: disjoint, deterministic, stable."""

from __future__ import annotations

import json

import pytest

from eavss.errors import EavssError
from eavss.hallucination.splits import assign_part, build_splits, check_disjoint, split_source

TAU = 0.01



# ---------------------------------------------------------------------------------------------
# splits


def test_splits_are_disjoint_deterministic_and_stable():
    from eavss.data.qa import QAItem

    ids = [f"q{i}" for i in range(2000)]
    a = split_source("nq_open", ids, 0, (0.5, 0.25, 0.25))
    b = split_source("nq_open", list(reversed(ids)), 0, (0.5, 0.25, 0.25))
    assert a == b
    sets = [set(a[p]) for p in ("score", "train", "eval")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(ids)
    assert abs(len(a["score"]) / 2000 - 0.5) < 0.05
    # adding questions never moves an existing one
    c = split_source("nq_open", ids + [f"new{i}" for i in range(100)], 0, (0.5, 0.25, 0.25))
    for p in a:
        assert set(a[p]) <= set(c[p])
    assert all(assign_part(0, "nq_open", q, (0.5, 0.25, 0.25)) == "score" for q in a["score"])
    # another seed gives another split
    assert split_source("nq_open", ids, 1, (0.5, 0.25, 0.25))["score"] != a["score"]
    items = {"nq_open": [QAItem("nq_open", q, q) for q in ids]}
    sp = build_splits(items, 0, (0.5, 0.25, 0.25), {"nq_open": a["score"][:10]})
    check_disjoint(sp)
    bad = json.loads(json.dumps(sp))
    bad["sources"]["nq_open"]["used_here"].append(a["train"][0])
    with pytest.raises(EavssError, match="outside its score part"):
        check_disjoint(bad)
    bad = json.loads(json.dumps(sp))
    bad["sources"]["nq_open"]["parts"]["eval"].append(a["score"][0])
    with pytest.raises(EavssError, match="leak"):
        check_disjoint(bad)
    with pytest.raises(EavssError, match="repeated"):
        split_source("x", ["a", "a"], 0, (0.5, 0.25, 0.25))
