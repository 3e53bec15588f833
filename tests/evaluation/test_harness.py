"""Tests of eavss.evaluation: token perplexity, task data/scoring, the lm-eval harness, retention.

Tiny random models (2 layers, hidden 64) from eavss.testing.tiny; the real datasets from the
shared data folder (tests needing it are skipped when it is absent).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from eavss.errors import EavssError
from eavss.evaluation import harness, intervals
from eavss.evaluation.perplexity import load_wikitext2_test_text, token_perplexity
from eavss.evaluation.tasks import TASKS_DIR
from eavss.evaluation.tasks import utils as tu
from eavss.testing.tiny import tiny_model, tiny_tokenizer


def _data_root() -> Path | None:
    from eavss.data.paths import resolve_data_dir

    try:
        root = resolve_data_dir(None)
    except EavssError:
        return None
    return root if (root / tu.WIKITEXT2_RAW).is_file() else None


DATA = _data_root()
needs_data = pytest.mark.skipif(DATA is None, reason="shared/data not found (set EAVSS_DATA_DIR)")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=0, num_layers=2, hidden=64)


SAMPLE_TEXT = (
    " = Robert Boulter = \n\n Robert Boulter is an English film , television and theatre actor . "
    "He had a guest @-@ starring role on the television series The Bill in 2000 . This was followed "
    "by a starring role in the play Herons written by Simon Stephens , which was performed in 2001 at "
    "the Royal Court Theatre . He had a guest role in the television series Judge John Deed in 2002 . "
) * 3


# --------------------------------------------------------------------------- token perplexity


def _reference_ppl(model, ids: list[int], L: int, S: int) -> tuple[float, int]:
    """Slow reference: windows b = 0, S, 2S, ... of length L (clipped at the end), one at a time;
    token t >= 1 is scored in the first window that holds both t-1 and t; float64 log-softmax by
    hand."""
    n = len(ids)
    scored: set[int] = set()
    total = 0.0
    b = 0
    while b < n:
        e = min(b + L, n)
        window = torch.tensor([ids[b:e]])
        with torch.no_grad():
            logits = model(input_ids=window).logits[0].double()
        for t in range(b + 1, e):
            if t in scored:
                continue
            row = logits[t - b - 1]
            m = row.max()
            logz = m + torch.log(torch.exp(row - m).sum())
            total += float(logz - row[ids[t]])
            scored.add(t)
        if e == n:
            break
        b += S
    return math.exp(total / len(scored)), len(scored)


@pytest.mark.parametrize(("L", "S", "bs"), [(32, None, 3), (32, 12, 2), (16, 1, 8), (40, 40, 1)])
def test_token_perplexity_matches_reference(model, tok, L, S, bs):
    ids = tok(SAMPLE_TEXT)["input_ids"][:150]
    got = token_perplexity(model, tok, SAMPLE_TEXT, context_length=L, stride=S, max_tokens=150, batch_size=bs)
    ref, n_ref = _reference_ppl(model, ids, L, S or L)
    assert got["num_tokens"] == 150
    assert got["num_tokens_scored"] == n_ref
    assert got["token_perplexity"] == pytest.approx(ref, rel=1e-5)
    assert got["nll_per_token"] == pytest.approx(math.log(ref), rel=1e-5)
    if S is None or S == L:  # first token of every window is unscored
        assert n_ref == 150 - math.ceil(150 / L)
    else:  # sliding: every token but the very first is scored once
        assert n_ref == 149
    assert got["context_length"] == L and got["stride"] == (S or L) and got["max_tokens"] == 150


def test_token_perplexity_drop_last_and_errors(model, tok):
    r = token_perplexity(model, tok, SAMPLE_TEXT, context_length=32, max_tokens=100, drop_last=True)
    assert r["num_windows"] == 3 and r["num_tokens_scored"] == 3 * 31
    with pytest.raises(EavssError, match="stride"):
        token_perplexity(model, tok, SAMPLE_TEXT, context_length=32, stride=33)
    with pytest.raises(EavssError, match="max_position_embeddings"):
        token_perplexity(model, tok, SAMPLE_TEXT, context_length=4096)
    with pytest.raises(EavssError, match="too few"):
        token_perplexity(model, tok, SAMPLE_TEXT, context_length=32, max_tokens=10, drop_last=True)


# --------------------------------------------------------------------------- SQuAD scoring


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("The  Cat!", "cat"),
        ("Washington, D.C.", "washington dc"),
        ("theater Anthem another", "theater anthem another"),  # articles only as whole words
        ("A", ""),
        ("1,000.5 km", "10005 km"),
        ("  an\tapple\n", "apple"),
        ("\u201cHello\u201d", "\u201chello\u201d"),  # v1.1 removes ASCII punctuation only
    ],
)
def test_squad_normalize(raw, norm):
    assert tu.squad_normalize_answer(raw) == norm


def test_squad_em_f1():
    assert tu.squad_exact_match("Washington, D.C.", "washington DC") == 1.0
    assert tu.squad_exact_match("not Mark Twain", "Mark Twain") == 0.0
    assert tu.squad_f1("not Mark Twain", "Mark Twain") == pytest.approx(0.8)
    assert tu.squad_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert tu.squad_f1("dog dog dog", "dog") == pytest.approx(0.5)  # multiset overlap
    assert tu.squad_f1("the", "a") == 0.0  # both normalise to empty: 0 in v1.1
    assert tu.squad_f1("Paris", "London") == 0.0
    s = tu.squad_scores(" Denver Broncos", ["Broncos", "Denver Broncos", "Denver"])
    assert s == {"exact_match": 100.0, "f1": 100.0}
    s = tu.squad_scores("Denver", ["Denver Broncos", "the Broncos"])
    assert s["exact_match"] == 0.0 and s["f1"] == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError):
        tu.squad_scores("x", [])


# --------------------------------------------------------------------------- WikiText documents


def test_split_documents_synthetic():
    lines = [" ", " = A = ", " ", " x . ", " = = Sub = = ", " y ", " = = = Deep = = = ", " = B = ", " z ", ""]
    docs = tu.split_wikitext_documents(lines)
    assert docs == [" = A = \n \n x . \n = = Sub = = \n y \n = = = Deep = = = ", " = B = \n z \n"]
    assert tu.is_article_heading(" = Robert Boulter = ")
    assert not tu.is_article_heading(" = = Career = = ")
    assert not tu.is_article_heading(" = = = 2000 \u2013 2005 = = = ")


@needs_data
def test_wikitext2_documents_real():
    lines, restored = tu.wikitext2_raw_lines(DATA)
    assert restored and len(lines) == 4359 and lines[-1] == ""
    docs = tu.wikitext2_documents(DATA)
    assert len(docs) == 62  # verified: 62 top-level headings in the test split
    assert docs[0].startswith(" = Robert Boulter = \n \n Robert Boulter is an English film")
    assert all(tu.is_article_heading(d.split("\n", 1)[0]) for d in docs)
    # word count as lm-eval counts it: 241,211 words + 2 empty ends per article
    assert sum(len(re.split(r"\s+", d)) for d in docs) == 241_211 + 2 * 62
    rows = tu.wikitext2_hf_rows(DATA)
    assert len(rows) == 4358 and rows[0] == "" and rows[1] == " = Robert Boulter = \n"
    assert len(load_wikitext2_test_text(DATA)) == 1_294_336
    # detokenizer identical to lm-eval's on every article
    src = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks/wikitext/preprocess_wikitext.py"
    spec = importlib.util.spec_from_file_location("_lm_eval_wikitext_ref", src)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    assert all(ref.wikitext_detokenizer({"page": d}) == tu.wikitext_detokenize(d) for d in docs)


@needs_data
def test_wikitext2_layouts(tmp_path):
    restored = tu.wikitext2_documents(DATA)
    # without the layout template: same 62 articles, blank lines missing, flagged
    only_raw = tmp_path / "a" / tu.WIKITEXT2_RAW
    only_raw.parent.mkdir(parents=True)
    shutil.copy(DATA / tu.WIKITEXT2_RAW, only_raw)
    lines, ok = tu.wikitext2_raw_lines(tmp_path / "a")
    assert not ok and len(lines) == 2892
    assert len(tu.split_wikitext_documents(lines)) == 62
    # an original-layout file (LF, blank lines kept) is used as it is
    orig = tmp_path / "b" / tu.WIKITEXT2_RAW
    orig.parent.mkdir(parents=True)
    orig.write_text("\n".join(tu.wikitext2_raw_lines(DATA)[0]), encoding="utf-8")
    assert tu.wikitext2_documents(tmp_path / "b") == restored


# --------------------------------------------------------------------------- lm-eval task YAMLs


@needs_data
def test_task_yamls_load_local_data():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(DATA)})
    assert {"eavss_wikitext2", "eavss_squad", "eavss_sst2"} <= set(tm.all_tasks)
    tasks = tm.load(["eavss_sst2", "eavss_squad", "eavss_wikitext2"])["tasks"]
    sst2 = next(t for n, t in tasks.items() if "sst2" in n)
    docs = list(sst2.eval_docs)
    assert len(docs) == 872
    assert sst2.doc_to_text(docs[0]) == (
        "it 's a charming and often affecting journey . \nQuestion: Is this sentence positive or negative?\nAnswer:"
    )
    assert sst2.doc_to_choice(docs[0]) == ["negative", "positive"] and sst2.config.target_delimiter == " "
    squad = next(t for n, t in tasks.items() if "squad" in n)
    sdocs = squad.eval_docs
    assert len(sdocs) == 10_565 and sdocs[0]["title"] == "Super_Bowl_50"
    assert squad.doc_to_text(sdocs[0]).startswith("Title: Super_Bowl_50\n\nBackground: Super Bowl 50 was")
    assert squad.doc_to_text(sdocs[0]).endswith("\n\nQuestion: " + sdocs[0]["question"] + "\n\nAnswer:")
    assert squad.config.generation_kwargs["until"] == ["\n"]
    wiki = next(t for n, t in tasks.items() if "wikitext" in n)
    assert len(wiki.eval_docs) == 62


# --------------------------------------------------------------------------- harness


@needs_data
def test_harness_all_tasks_tiny(model, tok):
    res = harness.evaluate(
        model, tok, ["wikitext2", "squad", "sst2", "ppl"], limit=4, data_dir=DATA, batch_size=4,
        max_gen_toks=8, task_options={"ppl": {"context_length": 64}, "wikitext2": {"max_length": 128}},
    )
    assert list(res) == ["wikitext2", "squad", "sst2", "ppl"]
    json.dumps(res, allow_nan=False)
    for name, r in res.items():
        assert r["primary_metric"] in r["metrics"]
        assert all(v is not None and math.isfinite(v) for v in r["metrics"].values()), (name, r["metrics"])
        assert r["n_samples"] == 4 and r["limit"] == 4 and r["seconds"] > 0
        assert r["lm_eval_version"] and set(r["description"]) >= {"data", "prompt", "stop", "normaliser"}
    assert set(res["wikitext2"]["metrics"]) == {"word_perplexity", "byte_perplexity", "bits_per_byte"}
    w = res["wikitext2"]["metrics"]
    assert w["bits_per_byte"] == pytest.approx(math.log2(w["byte_perplexity"]), rel=1e-9)
    assert res["wikitext2"]["n_total"] == 62 and res["squad"]["n_total"] == 10_565 and res["sst2"]["n_total"] == 872
    assert 0 <= res["squad"]["metrics"]["exact_match"] <= res["squad"]["metrics"]["f1"] <= 100
    assert 0 <= res["sst2"]["metrics"]["acc"] <= 1 and res["sst2"]["stderr"]["acc"] is not None
    # ppl: 4 windows of 64 tokens drawn from a plan over the whole test text (not its first 256 tokens)
    assert res["ppl"]["details"]["num_tokens"] > 100_000 and res["ppl"]["n_total"] > 1000
    assert res["ppl"]["details"]["num_tokens_scored"] == 4 * 63
    for name, r in res.items():  # every metric has a CI and per-item values that give it back
        assert len(r["item_ids"]) == 4 and r["item_ids"] == sorted(set(r["item_ids"]))
        assert r["item_ids"] != list(range(4)), name
        for m, v in r["metrics"].items():
            lo, hi = r["ci"][m]
            assert lo <= v * (1 + 1e-9) and v <= hi * (1 + 1e-9), (name, m, v, lo, hi)
            assert intervals.metric_from_items(r["per_item"], m) == pytest.approx(v, rel=1e-9), (name, m)
    assert res["wikitext2"]["details"]["max_length"] == 128 and res["wikitext2"]["details"]["batch_size"] == 4
    assert res["squad"]["details"]["max_length"] == 256  # the override is for wikitext2 only


def test_retention_math():
    orig = {
        "wikitext2": {"metrics": {"word_perplexity": 20.0, "byte_perplexity": 1.6, "bits_per_byte": 0.7}},
        "squad": {"metrics": {"f1": 50.0, "exact_match": 40.0}},
        "sst2": {"metrics": {"acc": 0.8}},
        "ppl": {"metrics": {"token_perplexity": 10.0}},
    }
    pruned = {
        "wikitext2": {"metrics": {"word_perplexity": 40.0, "byte_perplexity": 2.0, "bits_per_byte": 1.0}},
        "squad": {"metrics": {"f1": 25.0, "exact_match": 0.0}},
        "sst2": {"acc": 0.6},  # bare metric mapping accepted
        "ppl": {"metrics": {"token_perplexity": 12.5}},
        "other": {"metrics": {}},
    }
    r = harness.retention(orig, pruned)
    assert set(r) == {"wikitext2", "squad", "sst2", "ppl"}
    assert r["wikitext2"]["metric"] == "word_perplexity" and r["wikitext2"]["retention_pct"] == pytest.approx(50.0)
    assert r["wikitext2"]["secondary"]["bits_per_byte"]["retention_pct"] == pytest.approx(70.0)
    assert r["squad"]["metric"] == "f1" and r["squad"]["retention_pct"] == pytest.approx(50.0)
    assert r["squad"]["secondary"]["exact_match"]["retention_pct"] == pytest.approx(0.0)
    # sst2 is chance-corrected (chance 0.5): 100 * (0.6 - 0.5) / (0.8 - 0.5); the raw ratio is kept
    assert r["sst2"]["retention_pct"] == pytest.approx(100 / 3) and r["sst2"]["retention_raw_pct"] == pytest.approx(75.0)
    assert r["sst2"]["chance"] == 0.5 and r["sst2"]["near_chance"] is False and r["sst2"]["ci"] is None
    assert r["ppl"]["retention_pct"] == pytest.approx(80.0) and r["ppl"]["higher_is_better"] is False
    assert r["squad"]["chance_corrected"] is False and r["squad"]["retention_raw_pct"] == r["squad"]["retention_pct"]
    zero = harness.retention({"squad": {"f1": 0.0}}, {"squad": {"f1": 5.0}})
    assert zero["squad"]["retention_pct"] is None
    at_chance = harness.retention({"sst2": {"acc": 0.5}}, {"sst2": {"acc": 0.6}})["sst2"]
    assert at_chance["retention_pct"] is None and at_chance["near_chance"] is True and "chance" in at_chance["note"]
    with pytest.raises(EavssError, match="share no task"):
        harness.retention({"sst2": {"acc": 1}}, {"squad": {"f1": 1}})
    assert harness.PRIMARY_METRICS == {
        "wikitext2": "word_perplexity", "squad": "f1", "sst2": "acc", "ppl": "token_perplexity",
        "ptb": "token_perplexity", "sciq": "acc",
    }


def test_register_task_plugs_in(model, tok, tmp_path):
    @harness.register_task("const", primary_metric="score", higher_is_better={"score": True})
    def _const(ctx, limit):
        return {"metrics": {"score": float(limit or 0)}, "n_samples": limit}

    try:
        res = harness.evaluate(model, tok, "const", limit=3, data_dir=tmp_path)
        assert res["const"]["metrics"] == {"score": 3.0} and res["const"]["higher_is_better"] == {"score": True}
        assert harness.retention(res, {"const": {"score": 1.5}})["const"]["retention_pct"] == pytest.approx(50.0)
    finally:
        harness.TASKS.unregister("const")


def test_unknown_task_error(model, tok):
    with pytest.raises(EavssError) as exc:
        harness.evaluate(model, tok, ["sst2", "hellaswag"])
    msg = str(exc.value)
    assert "hellaswag" in msg and all(t in msg for t in ("ppl", "squad", "sst2", "wikitext2", "ptb", "sciq"))
    with pytest.raises(EavssError, match="limit"):
        harness.evaluate(model, tok, ["sst2"], limit=0)
    with pytest.raises(EavssError, match="task_options"):
        harness.evaluate(model, tok, ["sst2"], task_options={"mmlu": {}})


def test_missing_data_errors(model, tok, tmp_path):
    with pytest.raises(EavssError, match="does not exist"):
        harness.evaluate(model, tok, ["sst2"], data_dir=tmp_path / "nope")
    with pytest.raises(EavssError, match="missing"):  # root exists, task file does not
        harness.evaluate(model, tok, ["squad"], data_dir=tmp_path)
    with pytest.raises(EavssError, match="missing"):
        load_wikitext2_test_text(tmp_path)


@needs_data
def test_bad_task_option(model, tok):
    with pytest.raises(EavssError, match="ppl option"):
        harness.evaluate(model, tok, ["ppl"], data_dir=DATA, task_options={"ppl": {"context": 64}})


@needs_data
@pytest.mark.parametrize("progress", [True, False])
def test_lm_eval_progress_bars_follow_progress(model, tok, progress, capfd):
    """``progress=False`` (``--no-progress``) silences lm-eval's bars -- the request runners' and the
    one drawn while building requests -- and leaves lm-eval's own tqdm as it was afterwards."""
    import lm_eval.api.task as task_module

    before = task_module.tqdm
    capfd.readouterr()
    res = harness.evaluate(model, tok, ["sciq"], limit=3, data_dir=DATA, progress=progress)
    err = capfd.readouterr().err
    assert res["sciq"]["n_samples"] == 3 and task_module.tqdm is before
    bars = [m for m in ("Running loglikelihood requests", "it/s]") if m in err]
    assert bars if progress else not bars, err[-500:]
