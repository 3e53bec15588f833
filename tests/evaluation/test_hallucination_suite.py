"""The hallucination evaluation suite: WikiQA MAP/MRR through the task against hand-computed values,
TruthfulQA MC1/MC2 against lm-eval's formulas, normalisers and stop rules, eval-part selection,
per-item bootstrap and paired intervals, per-window perplexity."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

from eavss.errors import EavssError
from eavss.evaluation import hallucination_suite as hs
from eavss.evaluation.harness import RunContext
from eavss.evaluation.tasks import hallucination_utils as hu


class FakeLM:
    """An lm-eval LM whose log-likelihoods and generations are set by the test (no model)."""

    def __new__(cls, ll=None, gen=None):
        from lm_eval.api.model import LM

        class _Fake(LM):
            def __init__(self):
                super().__init__()
                self.calls = []

            def loglikelihood(self, requests, disable_tqdm=False):
                out = []
                for r in requests:
                    ctx, cont = r.args
                    self.calls.append((ctx, cont))
                    out.append((float(ll(ctx, cont)), False))
                return out

            def loglikelihood_rolling(self, requests, disable_tqdm=False):  # pragma: no cover - unused
                raise NotImplementedError

            def generate_until(self, requests, disable_tqdm=False):
                return [gen(r.args[0], r.args[1]) for r in requests]

        return _Fake()


def _ctx(tmp_or_root, lm, options=None, seed=0):
    return RunContext(model=None, tokenizer=None, data_dir=tmp_or_root, batch_size=1, seed=seed, max_gen_toks=8,
                      options=options or {}, _hflm=lm)


# --------------------------------------------------------------------------- WikiQA, hand-computed

HEADER = ["QuestionID", "Question", "DocumentID", "DocumentTitle", "SentenceID", "Sentence", "Label"]
WIKI = [  # (qid, question, sentence, label, log-likelihood the fake model gives it)
    ("Q1", "who wrote hamlet", "Hamlet is a play.", 0, -10.0),
    ("Q1", "who wrote hamlet", "Shakespeare wrote it.", 1, -30.0),
    ("Q1", "who wrote hamlet", "It is long and famous in many places.", 0, -20.0),
    ("Q2", "what is ice", "Ice is frozen water.", 1, -5.0),
    ("Q2", "what is ice", "It melts.", 1, -50.0),
    ("Q2", "what is ice", "Cold things exist everywhere on earth.", 0, -12.0),
    ("Q2", "what is ice", "Rivers flow.", 0, -60.0),
    ("Q3", "how far is the moon", "The sun is hot.", 0, -1.0),
    ("Q3", "how far is the moon", "Stars shine.", 0, -2.0),
    ("Q4", "what colour is the sky", "The sky is blue.", 1, -3.0),
    ("Q4", "what colour is the sky", "Blue, on a clear day.", 1, -4.0),
]
LL = {s: ll for _, _, s, _, ll in WIKI}


@pytest.fixture
def wikiqa_root(tmp_path):
    for split, qids in (("dev", {"Q1", "Q3"}), ("test", {"Q2", "Q4"})):
        path = tmp_path / "wikiqa" / "github_jhu-copy" / f"WikiQA-{split}.tsv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write("\t".join(HEADER) + "\n")
            for qid, q, s, y, _ in WIKI:
                if qid in qids:
                    fh.write("\t".join([qid, q, "D" + qid, "T", qid + "-x", s, str(y)]) + "\n")
    splits = {"version": 1, "seed": 0, "fractions": {"score": 0.0, "train": 0.0, "eval": 1.0}, "rule": "", "sources": {}}
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    return tmp_path


def _ap(ranked_labels):
    hits, s = 0, 0.0
    for i, y in enumerate(ranked_labels, 1):
        if y:
            hits += 1
            s += hits / i
    return s / hits


def test_wikiqa_map_mrr_through_the_task_match_hand_computation(wikiqa_root):
    lm = FakeLM(ll=lambda ctx, cont: LL[cont.strip()])
    res = hs._run_wikiqa(_ctx(wikiqa_root, lm, {"wikiqa": {"splits": str(wikiqa_root / "splits.json")}}), None)
    # prompt and continuation as documented
    assert ("Q: who wrote hamlet?\nA:", " Shakespeare wrote it.") in lm.calls
    # Q3 has no correct candidate: excluded and counted; Q1, Q2, Q4 are scored (order: split hash)
    assert res["details"]["excluded_no_correct"] == 1 and res["details"]["all_correct_kept"] == 1
    assert sorted(res["item_ids"]) == ["Q1", "Q2", "Q4"] and res["n_total"] == 3
    # by hand. Summed log-likelihood: Q1 ranks [play(-10), long(-20), Shakespeare(-30)] -> correct at 3
    #   AP = RR = 1/3; Q2 ranks [Ice(-5), Cold(-12), melts(-50), Rivers(-60)] -> correct at 1, 3: AP = (1/1 + 2/3)/2,
    #   RR = 1; Q4: every candidate correct -> 1, 1.
    by_sum = {"Q1": (1 / 3, 1 / 3), "Q2": ((1 + 2 / 3) / 2, 1.0), "Q4": (1.0, 1.0)}
    # per character: Q1: play -10/17=-0.588, Shakespeare -30/21=-1.429, long -20/37=-0.541 -> [long, play, Shakesp.]
    #   correct at 3 -> 1/3, 1/3; Q2: Ice -5/20=-0.25, melts -50/9=-5.56, Cold -12/38=-0.316, Rivers -60/12=-5
    #   -> [Ice, Cold, Rivers, melts]: correct at 1 and 4 -> AP = (1 + 2/4)/2 = 0.75, RR = 1
    by_char = {"Q1": (1 / 3, 1 / 3), "Q2": (0.75, 1.0), "Q4": (1.0, 1.0)}
    cols = res["per_item"]["columns"]
    for i, q in enumerate(res["item_ids"]):
        assert cols["map_sum"][i] == pytest.approx(by_sum[q][0]) and cols["mrr_sum"][i] == pytest.approx(by_sum[q][1])
        assert cols["map"][i] == pytest.approx(by_char[q][0]) and cols["mrr"][i] == pytest.approx(by_char[q][1])
    # the same numbers by an independent sort
    for q, cands in (("Q1", WIKI[0:3]), ("Q2", WIKI[3:7])):
        ranked = [y for _, _, s, y, ll in sorted(cands, key=lambda c: -c[4] / len(c[2]))]
        assert _ap(ranked) == pytest.approx(by_char[q][0])
    m = res["metrics"]
    assert m["map"] == pytest.approx((1 / 3 + 0.75 + 1) / 3) and m["mrr"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert m["map_sum"] == pytest.approx((1 / 3 + (1 + 2 / 3) / 2 + 1) / 3)
    ci = res["details"]["ci"]["map"]
    assert ci["lo"] <= m["map"] <= ci["hi"] and ci["n"] == 3
    # limit: the first N of the part (split-hash order)
    res2 = hs._run_wikiqa(_ctx(wikiqa_root, FakeLM(ll=lambda c, x: LL[x.strip()]),
                               {"wikiqa": {"splits": str(wikiqa_root / "splits.json")}}), 2)
    assert res2["item_ids"] == res["item_ids"][:2]


def test_wikiqa_ties_are_stable(wikiqa_root):
    res = hs._run_wikiqa(_ctx(wikiqa_root, FakeLM(ll=lambda c, x: -1.0),
                              {"wikiqa": {"splits": str(wikiqa_root / "splits.json")}}), None)
    # all tied: candidates keep file order. Q1 correct at 2 -> 1/2; Q2 correct at 1, 2 -> 1; Q4 -> 1
    got = dict(zip(res["item_ids"], res["per_item"]["columns"]["map_sum"]))
    assert got == {"Q1": pytest.approx(0.5), "Q2": pytest.approx(1.0), "Q4": pytest.approx(1.0)}


# --------------------------------------------------------------------------- TruthfulQA MC1 / MC2


def test_truthfulqa_mc1_mc2_as_lm_eval_computes_them():
    from eavss.data.paths import resolve_data_dir

    root = resolve_data_dir(None)
    ll = lambda ctx, cont: -0.37 * len(cont) - 0.01 * (hash(cont) % 7)
    lm = FakeLM(ll=ll, gen=lambda ctx, kw: " I have no comment.")
    res = hs._run_truthfulqa(_ctx(root, lm), 3)
    assert len(res["item_ids"]) == 3 and res["details"]["unmatched_mc_questions"] == 0
    mc = json.loads((root / hu.TRUTHFULQA_MC["current"]).read_text())
    by_q = {" ".join(r["question"].split()): r for r in mc}
    from eavss.data.qa import load_source

    items = {it.qid: it for it in load_source("truthfulqa")}
    for i, q in enumerate(res["item_ids"]):
        row = by_q[" ".join(items[q].question.split())]
        c1 = list(row["mc1_targets"])
        s1 = [ll("", " " + c) for c in c1]
        gold = list(row["mc1_targets"].values()).index(1)
        assert res["per_item"]["columns"]["mc1"][i] == float(int(np.argmax(s1)) == gold)
        c2, lab = list(row["mc2_targets"]), np.array(list(row["mc2_targets"].values()))
        p = np.exp([ll("", " " + c) for c in c2])
        assert res["per_item"]["columns"]["mc2"][i] == pytest.approx(p[lab == 1].sum() / p.sum())
        # "I have no comment." is a true reference: BLEU and ROUGE-L both prefer it
        assert res["per_item"]["columns"]["gen_bleu_acc"][i] == 1.0
        assert res["per_item"]["columns"]["gen_rougeL_acc"][i] == 1.0
    ctx_text = lm.calls[0][0]
    assert ctx_text.startswith(hu.QA_PRIMER + "\n\nQ: ") and ctx_text.endswith("\nA:")


# --------------------------------------------------------------------------- open QA: normalisers and stop rule


def test_normalisers_and_exact_match():
    assert hu.triviaqa_normalize_answer("Washington, D.C.") == "washington d c"
    assert hu.triviaqa_normalize_answer("The_Beatles’ song") == "beatles song"
    assert hu.nq_normalize_answer("Washington, D.C.") == "washington dc"
    assert hu.exact_match(" Washington, D.C.", ["Washington, D.C."], hu.triviaqa_normalize_answer) == 1.0
    assert hu.exact_match("Washington", ["Washington, D.C."], hu.triviaqa_normalize_answer) == 0.0
    assert hu.exact_match("the Eiffel tower", ["Eiffel Tower"], hu.nq_normalize_answer) == 1.0
    r = hu.triviaqa_process_results({"answers": ["Washington, D.C.", "DC"]}, [" Washington, D.C.\nQ: next"])
    assert r == {"em": 1.0}


def test_generation_tasks_stop_at_newline_only():
    from lm_eval.tasks import TaskManager

    from eavss.data.paths import resolve_data_dir
    from eavss.evaluation.tasks import TASKS_DIR

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                     metadata={"data_dir": str(resolve_data_dir(None)), "splits": None, "part": "eval", "limit": 2,
                               "options": {}})
    tasks = tm.load(["eavss_nq_open", "eavss_triviaqa", "eavss_truthfulqa_gen"])["tasks"]
    for name, t in tasks.items():
        assert t.config.generation_kwargs["until"] == ["\n"], name
        assert t.config.generation_kwargs["do_sample"] is False
    trivia = tasks["eavss_triviaqa"]
    doc = next(iter(trivia.eval_docs))
    assert trivia.doc_to_text(doc).endswith("?\nA:") and "Answer each question with a short answer." in trivia.doc_to_text(doc)


def test_open_qa_task_through_lm_eval_keeps_commas():
    from eavss.data.paths import resolve_data_dir

    root = resolve_data_dir(None)
    seen = []

    def gen(ctx, kw):
        seen.append(kw)
        return " Washington, D.C."

    res = hs._run_triviaqa(_ctx(root, FakeLM(gen=gen)), 3)
    assert seen and all(kw["until"] == ["\n"] for kw in seen)
    assert res["details"]["answers"] == ["Washington, D.C."] * 3
    assert len(res["per_item"]["columns"]["em"]) == 3 and res["n_total"] > 1000


# --------------------------------------------------------------------------- which questions


def test_part_ids_follow_the_split_and_refuse_foreign_files(tmp_path):
    from eavss.data.qa import load_source
    from eavss.hallucination.splits import build_splits

    items = load_source("sciq")
    ids = [it.qid for it in items]
    splits = build_splits({"sciq": items}, 3, (0.5, 0.25, 0.25), {"sciq": []})
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    ev = hu.part_ids("sciq", ids, str(tmp_path), "eval")
    assert ev == splits["sources"]["sciq"]["parts"]["eval"]
    assert not set(ev) & set(splits["sources"]["sciq"]["parts"]["score"])
    assert not set(ev) & set(splits["sources"]["sciq"]["parts"]["train"])
    # a source the file does not list: the same rule with the file's seed and fractions
    nq = [it.qid for it in load_source("nq_open")]
    ev_nq = hu.part_ids("nq_open", nq, str(tmp_path), "eval")
    from eavss.hallucination.splits import assign_part

    assert ev_nq and all(assign_part(3, "nq_open", q, (0.5, 0.25, 0.25)) == "eval" for q in ev_nq)
    # default rule without a file: seed 0
    assert hu.part_ids("sciq", ids, None, "eval") != ev
    bad = dict(splits)
    bad["sources"] = {"sciq": {**splits["sources"]["sciq"], "parts": {**splits["sources"]["sciq"]["parts"],
                                                                     "eval": ["not-an-id"]}}}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "splits.json").write_text(json.dumps(bad))
    with pytest.raises(EavssError, match="does not have"):
        hu.part_ids("sciq", ids, str(tmp_path / "bad"), "eval")


def test_unknown_option_is_one_line(tmp_path):
    with pytest.raises(EavssError, match="unknown wikiqa option") as e:
        hs._run_wikiqa(_ctx(tmp_path, FakeLM(), {"wikiqa": {"foo": 1}}), 2)
    assert "\n" not in str(e.value)


def test_suite_tasks_are_registered_and_eval_suite_expands():
    from eavss.config import load_config
    from eavss.evaluation.harness import TASKS
    from eavss.recipes.avss import EvalConfig

    for t in hs.SUITE_TASKS:
        assert t in TASKS and TASKS[t].description["scoring"]
    cfg = load_config(EvalConfig, None, ["eval.suite=hallucination", "eval.limits.wikiqa=7"])
    assert cfg.eval.tasks == list(hs.SUITES["hallucination"])
    assert cfg.eval.limits["wikiqa"] == 7 and cfg.eval.limits["nq_open"] == hs.DEFAULT_LIMITS["nq_open"]


# --------------------------------------------------------------------------- intervals


def _result(vals, ids=None, agg="mean"):
    if agg == "mean":
        return {"item_ids": ids or [str(i) for i in range(len(vals))],
                "per_item": {"columns": {"x": list(vals)}, "aggregation": {"x": ["mean", ["x"]]}}}
    nll, n = vals
    return {"item_ids": [str(i) for i in range(len(n))],
            "per_item": {"columns": {"nll": nll, "n": n}, "aggregation": {"ppl": ["perplexity_of_sums", ["nll", "n"]]}}}


def test_bootstrap_and_paired_change_against_a_slow_reference():
    from eavss.evaluation.item_bootstrap import (
        bootstrap_ci,
        paired_change,
        paired_change_mean,
        resample_indices,
    )

    g = np.random.default_rng(1)
    b = g.integers(0, 2, 40).astype(float)
    a = b.copy()
    a[:6] = 1.0  # six questions flipped to right (some already right)
    rb, ra = _result(b), _result(a)
    ci = bootstrap_ci(rb, "x", 200, seed=5)
    idx = resample_indices(40, 200, 5)
    draws = np.array([b[r].mean() for r in idx])
    assert ci["lo"] == pytest.approx(np.percentile(draws, 2.5)) and ci["hi"] == pytest.approx(np.percentile(draws, 97.5))
    ch = paired_change(rb, ra, "x", resamples=200, seed=5)
    d = np.array([a[r].mean() - b[r].mean() for r in idx])
    assert ch["abs_change"] == pytest.approx(a.mean() - b.mean())
    assert ch["abs_ci"] == [pytest.approx(np.percentile(d, 2.5)), pytest.approx(np.percentile(d, 97.5))]
    assert ch["rel_change"] == pytest.approx((a.mean() - b.mean()) / b.mean())
    assert ch["verdict"] in ("better", "inconclusive") and ch["p_better"] > 0.5
    # paired is narrower than two independent intervals
    ca = bootstrap_ci(ra, "x", 200, seed=6)
    assert ch["abs_ci"][1] - ch["abs_ci"][0] < (ci["hi"] - ci["lo"]) + (ca["hi"] - ca["lo"])
    # item order does not matter; different items are refused
    perm = list(range(40))[::-1]
    ra_rev = _result(a[perm], [str(i) for i in perm])
    assert paired_change(rb, ra_rev, "x", resamples=200, seed=5)["abs_ci"] == ch["abs_ci"]
    with pytest.raises(EavssError, match="different items"):
        paired_change(rb, _result(a, [str(i + 1) for i in range(40)]), "x")
    # identical models: exactly zero, "no change"; the mean of two equal afters equals one
    assert paired_change(rb, rb, "x", resamples=50)["verdict"] == "no change"
    m = paired_change_mean(rb, [ra, ra], "x", resamples=200, seed=5)
    assert m["abs_ci"] == ch["abs_ci"] and m["after_each"] == [a.mean(), a.mean()]
    # lower is better (perplexity of sums, a ratio of sums under resampling)
    nll_b, n = [10.0, 20.0, 30.0, 5.0], [5.0, 10.0, 10.0, 5.0]
    pb, pa = _result((nll_b, n), agg="ppl"), _result(([9.0, 18.0, 27.0, 4.0], n), agg="ppl")
    c = paired_change(pb, pa, "ppl", higher_is_better=False, resamples=100, seed=0)
    assert c["before"] == pytest.approx(math.exp(65 / 30)) and c["after"] == pytest.approx(math.exp(58 / 30))
    assert c["verdict"] == "better" and c["abs_change"] < 0


def test_window_perplexity_equals_token_perplexity():
    from eavss.evaluation.perplexity import token_perplexity
    from eavss.testing.tiny import tiny_model, tiny_tokenizer

    m, tok = tiny_model("llama", num_layers=2), tiny_tokenizer()
    text = "The cat sat on the mat. " * 60
    ref = token_perplexity(m, tok, text, context_length=32, max_tokens=3 * 32, batch_size=2)
    got = hs.window_perplexity(m, tok, text, context_length=32, max_windows=3, batch_size=2)
    assert got["metrics"]["token_perplexity"] == pytest.approx(ref["token_perplexity"], rel=1e-6)
    assert got["details"]["tokens_scored"] == ref["num_tokens_scored"]
    from eavss.evaluation.item_bootstrap import metric_from_items

    assert metric_from_items(got, "token_perplexity") == pytest.approx(ref["token_perplexity"], rel=1e-9)


def test_evaluate_suite_tiny_model_keeps_items_and_intervals():
    from eavss.testing.tiny import tiny_model, tiny_tokenizer

    m, tok = tiny_model("llama", num_layers=2), tiny_tokenizer()
    res = hs.evaluate_suite(m, tok, ["sciq_mc", "sst2", "ppl"], limits={"sciq_mc": 3, "sst2": 3, "ppl": 2},
                            task_options={"ppl": {"context_length": 64}}, batch_size=4, resamples=50)
    for r in res.values():
        assert len(r["item_ids"]) == r["n_samples"] and r["primary_metric"] in r["metrics"]
        for metric, ci in r["details"]["ci"].items():
            assert ci["lo"] is not None and ci["lo"] <= r["metrics"][metric] + 1e-12 <= ci["hi"] + 2e-12
    json.dumps(res, allow_nan=False)
    with pytest.raises(EavssError, match="unknown suite task"):
        hs.evaluate_suite(m, tok, ["squad"])


def test_suite_tasks_through_the_harness_keep_string_question_ids():
    """`eavss eval --tasks nq_open,triviaqa,wikiqa` (harness.evaluate): the datasets' own question ids
    are strings ("odql_3731", "Q2426") and stay strings; retention pairs them."""
    from eavss.evaluation import harness
    from eavss.testing.tiny import tiny_model, tiny_tokenizer

    m, tok = tiny_model("llama", num_layers=2), tiny_tokenizer()
    res = harness.evaluate(m, tok, ["nq_open", "triviaqa", "wikiqa"], limit=2, batch_size=4, max_gen_toks=4)
    for task, r in res.items():
        assert len(r["item_ids"]) == r["n_samples"] == 2, task
        assert all(isinstance(i, (int, str)) for i in r["item_ids"])
    assert any(isinstance(i, str) and not i.isdigit() for i in res["triviaqa"]["item_ids"])
    ret = harness.retention(res, res)
    assert ret["nq_open"]["item_ids_match"] and ret["wikiqa"]["n_items"] == 2
    assert harness._item_id("7") == 7 and harness._item_id(np.int64(3)) == 3 and harness._item_id("Q2426") == "Q2426"
