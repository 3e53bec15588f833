"""Honest retention: seeded random items over the whole set, per-item bootstrap intervals, paired and
chance-corrected retention, one task per capability in the mean, and the ptb / sciq tasks.

Reference computations are written out slowly (Python loops over resamples and items) and compared
with the vectorised code on tiny arrays. Tiny random models (eavss.testing.tiny) for the harness.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eavss.errors import EavssError
from eavss.evaluation import harness, intervals
from eavss.evaluation.perplexity import load_ptb_test_text
from eavss.evaluation.tasks import TASKS_DIR
from eavss.evaluation.tasks import utils as tu
from eavss.testing.tiny import tiny_model, tiny_tokenizer


def _data_root():
    from eavss.data.paths import resolve_data_dir

    try:
        root = resolve_data_dir(None)
    except EavssError:
        return None
    return root if (root / tu.PTB_TEST).is_file() and (root / tu.SCIQ_VALIDATION).is_dir() else None


DATA = _data_root()
needs_data = pytest.mark.skipif(DATA is None, reason="shared/data not found (set EAVSS_DATA_DIR)")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=0, num_layers=2, hidden=64)


@pytest.fixture(scope="module")
def other_model():
    return tiny_model("llama", seed=1, num_layers=2, hidden=64)


# --------------------------------------------------------------------------- slow references


def _ref_metric(kind: str, cols: list[list[float]], rows: list[int]) -> float:
    """One metric from the items ``rows`` (with repeats), by hand."""
    if kind == "mean":
        return sum(cols[0][i] for i in rows) / len(rows)
    a = sum(cols[0][i] for i in rows)
    b = sum(cols[1][i] for i in rows)
    if kind == "weighted_perplexity":
        return math.exp(-a / b)
    if kind == "bits_per_byte":
        return -a / (b * math.log(2))
    if kind == "perplexity_of_sums":
        return math.exp(a / b)
    assert kind == "ratio_of_sums"
    return a / b


def _ref_retention(o: float, p: float, higher: bool, chance: float | None) -> float:
    try:
        if chance is not None:
            return 100.0 * (p - chance) / (o - chance)
        return 100.0 * p / o if higher else 100.0 * o / p
    except ZeroDivisionError:
        return float("nan")


def _ref_paired_ci(kind, cols_o, cols_p, higher, chance, resamples, seed, level=0.95):
    """Slow paired bootstrap: draw the documented index rows, then loop over resamples."""
    n = len(cols_o[0])
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # the documented draws
    draws = []
    for r in range(resamples):
        items = [int(i) for i in rows[r]]
        draws.append(_ref_retention(_ref_metric(kind, cols_o, items), _ref_metric(kind, cols_p, items), higher, chance))
    finite = [d for d in draws if math.isfinite(d)]
    lo, hi = np.percentile(finite, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def _per_item(kind: str, cols: list[list[float]], metric: str = "m") -> dict:
    names = [f"c{i}" for i in range(len(cols))]
    return {"columns": dict(zip(names, cols)), "aggregation": {metric: [kind, names]}}


# --------------------------------------------------------------------------- item selection


def test_item_sample_is_seeded_spread_and_not_a_prefix():
    n = 10_565  # SQuAD dev: the first 40 questions are two paragraphs of one article
    a = intervals.sample_item_ids(n, 40, seed=0)
    assert a == intervals.sample_item_ids(n, 40, seed=0)  # same seed, same items (original = pruned)
    assert a != intervals.sample_item_ids(n, 40, seed=1)
    assert a == sorted(set(a)) and len(a) == 40 and all(0 <= i < n for i in a)
    assert a != list(range(40)) and max(a) > n // 2  # not the first N
    # spread over the whole set: every quarter of it holds some of the 40 items
    assert {i * 4 // n for i in a} == {0, 1, 2, 3}
    # over many seeds every id is about equally likely (uniform over the whole set)
    counts = np.bincount(np.concatenate([intervals.sample_item_ids(100, 10, s) for s in range(2000)]), minlength=100)
    assert counts.min() > 120 and counts.max() < 290  # expectation 200 each
    assert intervals.sample_item_ids(7, None, 3) == list(range(7)) == intervals.sample_item_ids(7, 99, 3)
    with pytest.raises(EavssError, match="limit"):
        intervals.sample_item_ids(7, 0, 3)


@needs_data
def test_harness_scores_the_same_random_items_for_original_and_pruned(model, other_model, tok):
    kw = {"limit": 5, "data_dir": DATA, "batch_size": 4, "seed": 7, "task_options": {"ppl": {"context_length": 64}}}
    a = harness.evaluate(model, tok, ["sst2", "ppl"], **kw)
    b = harness.evaluate(other_model, tok, ["sst2", "ppl"], **kw)
    for task in ("sst2", "ppl"):
        ids = a[task]["item_ids"]
        assert ids == b[task]["item_ids"] == intervals.sample_item_ids(a[task]["n_total"], 5, 7)
        assert ids != list(range(5)) and a[task]["sampling"]["seed"] == 7
    assert a["sst2"]["n_total"] == 872 and a["sst2"]["per_item"]["columns"]["acc"] != []
    ret = harness.retention(a, b)
    assert ret["sst2"]["item_ids_match"] is True and ret["sst2"]["n_items"] == 5
    assert ret["ppl"]["ci"] is not None and ret["ppl"]["ci"][0] <= ret["ppl"]["retention_pct"] <= ret["ppl"]["ci"][1]
    # another seed draws other items: retention refuses to compare them
    c = harness.evaluate(other_model, tok, ["sst2"], **{**kw, "seed": 8})
    assert c["sst2"]["item_ids"] != a["sst2"]["item_ids"]
    with pytest.raises(EavssError, match="different items"):
        harness.retention(a, c)


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("kind", sorted(intervals.AGGREGATIONS))
def test_bootstrap_ci_matches_slow_reference(kind):
    rng = np.random.default_rng(5)
    n = 9
    if kind == "mean":
        cols = [rng.integers(0, 2, n).astype(float).tolist()]
    elif kind in ("weighted_perplexity", "bits_per_byte"):
        cols = [(-rng.uniform(50, 500, n)).tolist(), rng.integers(20, 200, n).astype(float).tolist()]
    else:
        cols = [rng.uniform(50, 500, n).tolist(), rng.integers(20, 200, n).astype(float).tolist()]
    items = _per_item(kind, cols)
    assert intervals.metric_from_items(items, "m") == pytest.approx(_ref_metric(kind, cols, list(range(n))))
    rows = np.random.default_rng(11).integers(0, n, size=(300, n))
    ref = [_ref_metric(kind, cols, [int(i) for i in r]) for r in rows]
    assert intervals.bootstrap_ci(items, "m", 300, 11) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])))


@pytest.mark.parametrize(
    ("kind", "higher", "chance"),
    [("mean", True, None), ("mean", True, 0.25), ("perplexity_of_sums", False, None), ("weighted_perplexity", False, None)],
)
def test_paired_retention_ci_matches_slow_reference(kind, higher, chance):
    rng = np.random.default_rng(3)
    n = 8
    if kind == "mean":
        cols_o = [rng.choice([0.0, 1.0], n, p=[0.2, 0.8]).tolist()]
        cols_p = [rng.choice([0.0, 1.0], n, p=[0.4, 0.6]).tolist()]
    else:
        count = rng.integers(20, 60, n).astype(float).tolist()
        sign = -1.0 if kind == "weighted_perplexity" else 1.0
        cols_o = [(sign * rng.uniform(2, 3, n) * count).tolist(), count]
        cols_p = [(sign * rng.uniform(2.5, 3.5, n) * count).tolist(), count]
    got = intervals.percentile_interval(intervals.paired_retention_draws(
        _per_item(kind, cols_o), _per_item(kind, cols_p), "m", higher, chance, resamples=400, seed=21))
    assert got == pytest.approx(_ref_paired_ci(kind, cols_o, cols_p, higher, chance, 400, 21))
    # the same through retention(): the task's bootstrap seed is bootstrap_seed(run seed, task)
    task = "sciq" if chance is not None else ("sst2" if kind == "mean" else "ppl")
    metric = harness.TASKS[task].primary_metric

    def result(cols):
        return {"metrics": {metric: _ref_metric(kind, cols, list(range(n)))}, "item_ids": list(range(n)),
                "per_item": _per_item(kind, cols, metric), "settings": {"seed": 4}}

    r = harness.retention({task: result(cols_o)}, {task: result(cols_p)}, resamples=400)[task]
    if task == "sst2":  # sst2 is chance-corrected with 0.5: its raw interval is the plain ratio's
        assert r["ci_raw"] == pytest.approx(list(_ref_paired_ci(kind, cols_o, cols_p, True, None, 400,
                                                                harness.bootstrap_seed(4, task))))
    else:
        assert r["ci"] == pytest.approx(list(_ref_paired_ci(kind, cols_o, cols_p, higher, chance, 400,
                                                            harness.bootstrap_seed(4, task))))


def test_paired_bootstrap_is_tighter_than_unpaired_for_correlated_models():
    # the pruned model gets the same items right except one: pairing removes the item-to-item spread
    o = [1.0] * 30 + [0.0] * 10
    p = [1.0] * 29 + [0.0] * 11
    draws = intervals.paired_retention_draws(_per_item("mean", [o]), _per_item("mean", [p]), "m", True, None, 1000, 0)
    lo, hi = intervals.percentile_interval(draws)
    assert lo <= 100 * 29 / 30 <= hi <= 100.0 + 1e-9  # pruned never beats the original on these items
    unpaired = intervals.retention_values(
        intervals.metric_from_items(_per_item("mean", [o]), "m", intervals.resample_indices(40, 1000, 1)),
        intervals.metric_from_items(_per_item("mean", [p]), "m", intervals.resample_indices(40, 1000, 2)), True)
    u_lo, u_hi = intervals.percentile_interval(unpaired)
    assert hi - lo < 0.5 * (u_hi - u_lo)


# --------------------------------------------------------------------------- chance correction


def test_chance_corrected_retention_by_hand():
    orig = {"sst2": {"metrics": {"acc": 0.8}}, "sciq": {"metrics": {"acc": 0.70, "acc_norm": 0.61}}}
    pruned = {"sst2": {"metrics": {"acc": 0.65}}, "sciq": {"metrics": {"acc": 0.40, "acc_norm": 0.25}}}
    r = harness.retention(orig, pruned)
    assert r["sst2"]["chance"] == 0.5 and r["sst2"]["chance_corrected"] is True
    assert r["sst2"]["retention_pct"] == pytest.approx(100 * (0.65 - 0.5) / (0.8 - 0.5))  # 50 %
    assert r["sst2"]["retention_raw_pct"] == pytest.approx(100 * 0.65 / 0.8)  # 81.25 %
    assert r["sciq"]["chance"] == 0.25
    assert r["sciq"]["retention_pct"] == pytest.approx(100 * 0.15 / 0.45)  # 33.3 %
    assert r["sciq"]["retention_raw_pct"] == pytest.approx(100 * 0.40 / 0.70)
    assert r["sciq"]["secondary"]["acc_norm"]["retention_pct"] == pytest.approx(0.0)  # pruned at chance
    assert r["sciq"]["secondary"]["acc_norm"]["retention_raw_pct"] == pytest.approx(100 * 0.25 / 0.61)
    assert harness.TASKS.entry("sciq").meta["chance"] == 0.25 and harness.TASKS.entry("sst2").meta["chance"] == 0.5
    assert harness.TASKS.entry("squad").meta["chance"] is None


def test_near_chance_original_is_flagged_with_its_ci():
    n = 20
    o = [1.0] * 12 + [0.0] * 8  # acc 0.6, CI reaches below 0.5
    p = [1.0] * 11 + [0.0] * 9

    def res(col):
        per = {"columns": {"acc": col}, "aggregation": {"acc": ["mean", ["acc"]]}}
        lo, hi = intervals.bootstrap_ci(per, "acc", 1000, harness.bootstrap_seed(0, "sst2"))
        return {"metrics": {"acc": sum(col) / n}, "ci": {"acc": [lo, hi]}, "item_ids": list(range(n)), "per_item": per}

    r = harness.retention({"sst2": res(o)}, {"sst2": res(p)})["sst2"]
    assert r["original_ci"][0] <= 0.5 and r["near_chance"] is True
    assert "not clearly above chance" in r["note"] and "sst2" in r["note"]
    assert r["retention_pct"] == pytest.approx(100 * (0.55 - 0.5) / (0.6 - 0.5))
    clear = [1.0] * 19 + [0.0]
    r2 = harness.retention({"sst2": res(clear)}, {"sst2": res(p)})["sst2"]
    assert r2["near_chance"] is False and r2["note"] is None and r2["ci"][0] < r2["retention_pct"] < r2["ci"][1]


# --------------------------------------------------------------------------- mean over capabilities


def test_mean_retention_counts_each_capability_once():
    assert harness.TASKS.entry("ppl").meta["capability"] == harness.TASKS.entry("wikitext2").meta["capability"]
    assert harness.TASKS.entry("ptb").meta["capability"] != harness.TASKS.entry("ppl").meta["capability"]
    ret = {
        "wikitext2": {"retention_pct": 10.0, "capability": harness.WIKITEXT2_LM, "capability_priority": 1,
                      "draws": [10.0, 12.0]},
        "ppl": {"retention_pct": 40.0, "draws": [30.0, 50.0]},  # capability from the registry
        "squad": {"retention_pct": 60.0, "draws": [50.0, 70.0]},
        "sst2": {"retention_pct": -300.0, "near_chance": True, "draws": [1.0, 2.0]},
        "sciq": {"retention_pct": None},
    }
    m = harness.mean_retention(ret)
    assert m["tasks_used"] == ["ppl", "squad"] and m["mean_pct"] == pytest.approx(50.0)
    assert m["tasks_skipped_duplicate_capability"] == ["wikitext2"]
    assert m["tasks_skipped_near_chance"] == ["sst2"] and m["tasks_skipped_undefined"] == ["sciq"]
    assert m["capabilities"][harness.WIKITEXT2_LM] == "ppl"
    assert m["ci"] == pytest.approx(list(np.percentile([40.0, 60.0], [2.5, 97.5])))
    # wikitext2 alone counts for its capability
    solo = harness.mean_retention({"wikitext2": ret["wikitext2"]})
    assert solo["tasks_used"] == ["wikitext2"] and solo["tasks_skipped_duplicate_capability"] == []
    assert "draws" not in m and harness.mean_retention(ret, keep_draws=True)["draws"] == [40.0, 60.0]


def test_paired_difference_by_hand_and_tighter_than_two_intervals():
    """``a - b`` with the percentiles of the per-resample differences; None parts are handled."""
    da, db = [10.0, 12.0, None, 14.0], [9.0, 12.5, 3.0, 11.0]
    got = intervals.paired_difference(12.0, 11.0, da, db)
    assert got["diff"] == 1.0 and got["resamples"] == 4
    assert got["ci"] == pytest.approx(list(np.percentile([1.0, -0.5, 3.0], [2.5, 97.5])))  # the None draw left out
    assert intervals.paired_difference(None, 1.0, da, db)["diff"] is None
    assert intervals.paired_difference(1.0, 2.0, da, None) == {"diff": -1.0, "ci": None, "resamples": None}
    assert intervals.paired_difference(1.0, 2.0, da, db[:3])["ci"] is None  # different resamples: no pairing
    # two models that differ on one item of 40: the paired interval of the difference is far
    # narrower than the distance between the two separate intervals' ends
    o = [1.0] * 30 + [0.0] * 10
    p = [1.0] * 29 + [0.0] * 11
    idx = intervals.resample_indices(40, 1000, 0)
    mo = intervals.metric_from_items(_per_item("mean", [o]), "m", idx)
    mp = intervals.metric_from_items(_per_item("mean", [p]), "m", idx)
    pd = intervals.paired_difference(float(np.mean(p)), float(np.mean(o)), list(mp), list(mo))
    lo_o, hi_o = intervals.percentile_interval(mo)
    lo_p, hi_p = intervals.percentile_interval(mp)
    assert pd["diff"] == pytest.approx(-1 / 40) and pd["ci"][1] <= 0.0
    assert pd["ci"][1] - pd["ci"][0] < 0.5 * ((hi_o - lo_p) - (lo_o - hi_p))


# --------------------------------------------------------------------------- new tasks


@needs_data
def test_ptb_text_and_sciq_prompt():
    sents = tu.ptb_test_sentences(DATA)
    assert len(sents) == 3761 and sum(len(s.split()) for s in sents) == 78_669
    assert all(s == s.strip() and s for s in sents)
    assert load_ptb_test_text(DATA) == " ".join(sents)
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(DATA)})
    sciq = tm.load(["eavss_sciq"])["tasks"]["eavss_sciq"]
    docs = list(sciq.eval_docs)
    assert len(docs) == 1000
    d = next(x for x in docs if x["support"].strip())
    assert sciq.doc_to_text(d) == f"{d['support'].lstrip()}\nQuestion: {d['question']}\nAnswer:"
    assert sciq.doc_to_choice(d) == [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]]
    assert sciq.doc_to_target(d) == 3 and sciq.config.target_delimiter == " "
    # an empty support leaves the leading newline, exactly as lm-eval's own sciq prompt does
    assert sciq.doc_to_text(docs[0]) == f"\nQuestion: {docs[0]['question']}\nAnswer:"


@needs_data
def test_ptb_and_sciq_run_on_a_tiny_model(model, tok):
    res = harness.evaluate(model, tok, ["ptb", "sciq"], limit=3, data_dir=DATA, batch_size=4,
                           task_options={"ptb": {"context_length": 64}})
    json.dumps(res, allow_nan=False)
    ptb, sciq = res["ptb"], res["sciq"]
    assert set(ptb["metrics"]) == {"token_perplexity", "nll_per_token"}
    assert set(sciq["metrics"]) == {"acc", "acc_norm"}
    for r in (ptb, sciq):
        assert r["n_samples"] == 3 and len(r["item_ids"]) == 3
        for m, v in r["metrics"].items():
            assert v is not None and math.isfinite(v)
            assert r["ci"][m] is not None and all(math.isfinite(x) for x in r["ci"][m])
    assert ptb["metrics"]["token_perplexity"] == pytest.approx(math.exp(ptb["metrics"]["nll_per_token"]))
    assert ptb["details"]["num_tokens_scored"] == 3 * 63 and ptb["n_total"] > 1000
    assert sciq["n_total"] == 1000 and sciq["chance"] == 0.25 and sciq["capability"] == "SciQ science question answering"
    assert ptb["capability"] == "PTB language modelling" and ptb["chance"] is None
    # a token budget caps the windows: max_tokens // context_length of them
    few = harness.evaluate(model, tok, ["ptb"], data_dir=DATA, task_options={"ptb": {"context_length": 64, "max_tokens": 130}})
    assert few["ptb"]["n_samples"] == 2 and few["ptb"]["item_ids"] != [0, 1]
