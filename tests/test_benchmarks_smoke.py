"""The benchmark scripts run end to end (tiny model, CPU) and their variants compute what they claim."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_stats_overhead_runs_every_variant(tmp_path):
    import stats_overhead

    out = tmp_path / "r.json"
    rc = stats_overhead.main(["--model", "tiny:llama", "--batch-size", "2", "--seq-len", "16", "--num-batches", "2",
                              "--repeats", "1", "--warmup", "0", "--variants",
                              "plain,eavss,simple,official,hidden_states,bi_matrix,bi_rowwise", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["variants"]) == {"plain", "eavss", "simple", "official", "hidden_states", "bi_matrix", "bi_rowwise"}
    for v in res["variants"].values():
        assert v["median_seconds"] > 0 and v["ratio_to_plain"] > 0
    assert "in_pass" in res["variants"]["eavss"]
    # the same statistics, three ways: eavss hooks, the simple reduction, stored hidden states
    for name, rel in res["cross_check_max_rel_diff"].items():
        assert max(rel.values()) < 1e-4, (name, rel)


def test_bi_matrix_diagonal_equals_rowwise_block_influence():
    from baselines import BIMatrix, Eavss
    from stats_overhead import run_pass

    from eavss.stats.accumulators import F
    from eavss.testing.tiny import tiny_model

    model = tiny_model("llama", seed=2)
    ids = torch.randint(5, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        bm, rw = BIMatrix(model), Eavss(model)
        run_pass(bm, [batch], "cpu")
        run_pass(rw, [batch], "cpu")
    np.testing.assert_allclose(bm.acc.numpy(), rw.col.accumulator[:, 0, F["bi_sum"]].numpy(), rtol=1e-4, atol=1e-6)


def test_stats_overhead_site_variants_on_padded_batches(tmp_path):
    """The capture-site variants (issue 10) run on right-padded batches; their block influence equals
    the resid_post pass's."""
    import stats_overhead

    out = tmp_path / "r.json"
    names = "plain,eavss,eavss_resid_delta,eavss_resid_delta_nobi,eavss_mlp_act,eavss_mlp_act_nobi,eavss_mlp_act_eagerbi"
    rc = stats_overhead.main(["--model", "tiny:qwen2", "--batch-size", "2", "--seq-len", "16", "--num-batches", "2",
                              "--repeats", "1", "--warmup", "0", "--pad", "right", "--variants", names,
                              "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["variants"]) == set(names.split(","))
    assert res["workload"]["pad"] == "right" and res["workload"]["real_tokens"] < res["workload"]["tokens"]
    for site in ("resid_delta", "mlp_act"):
        assert res["cross_check_sites"][site]["bi_vs_resid_post"] < 1e-6


def test_gen_overhead_capture_is_the_recipes_and_changes_no_token(tmp_path):
    """gen_overhead.py on a tiny model, one round: capture and no-capture generate identical tokens
    (and so do the full-prompt loop and HF generate), and the statistics and probe features its
    capture variant collects equal those of the analysis's own capture step (capture_answers) on the
    same prompts."""
    import gen_overhead

    from eavss.hallucination.prompts import Prompt
    from eavss.recipes.hallucination import Sample, Tokens, capture_answers
    from eavss.testing.tiny import tiny_model, tiny_tokenizer

    out = tmp_path / "g.json"
    rc = gen_overhead.main(["--model", "tiny:llama", "--dtype", "float32", "--device", "cpu",
                            "--batch-sizes", "3", "--batches-per-size", "2", "--max-new-tokens", "4",
                            "--rounds", "1", "--warmup", "1", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    row = res["sizes"]["3"]
    assert res["capture_identical_everywhere"] and row["checks"]["capture_identical"]
    assert row["checks"]["capture_stats_identical"]
    assert row["checks"]["plain_full_vs_plain_identical_rows"] == "6/6"
    assert row["checks"]["hf_vs_plain_identical_rows"] == "6/6"
    v = row["variants"]
    assert set(v) == set(gen_overhead.VARIANTS)
    for x in v.values():
        assert x["median_seconds"] > 0 and x["generated_tokens"] == 6 * 4 and len(x["seconds"]) == 1
    # 2 batches x (prompt + 3 steps); capture counts the last token of the capped answers in
    # teacher-forced passes after both batches (3 rows of ~20 tokens each, under LAST_TOKEN_DEFER_TOKENS: deferred;
    # at most 3 rows a pass, the batch size: 2 passes), capture_step with one more step each
    assert v["plain"]["model_calls"] == v["hf"]["model_calls"] == 2 * 4
    assert v["capture"]["model_calls"] == 2 * 4 + 2
    assert v["capture_step"]["model_calls"] == 2 * 5
    assert {"capture/plain", "plain/hf", "plain_full/hf"} <= set(row["ratios"])

    # the benchmark's capture variant vs. the recipe's capture step on the same prompts
    model = tiny_model("llama", seed=0)
    prefix, suffixes = gen_overhead.make_prompts(6, 512, seed=3)
    setup = gen_overhead.Setup(model, prefix, suffixes, [], [], 0, 4)
    got = setup.run("capture", 3)
    stats = got["capture"].collector.result()
    feats, counts = got["capture"].features.result()
    samples = [Sample(i, "nq_open", str(i), "generated", "q", Prompt("qa", "Q: q\nA:"), ["a"]) for i in range(6)]
    ids = Tokens(prefix={"qa": prefix}, suffix=dict(enumerate(suffixes)), newline=[], eos=[], pad=0)
    ref_stats, ref_feats, passes = capture_answers(model, tiny_tokenizer(), samples, ids,
                                                   gen_overhead.recipe_config(3, 4), {})
    assert [s.answer_ids for s in samples] == got["tokens"]
    np.testing.assert_array_equal(stats.sums, ref_stats.sums)
    rf, rc_ = ref_feats.result()
    torch.testing.assert_close(feats, rf, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(counts, rc_)
    assert float(counts.sum()) == 6 * 4  # every generated token is an answer token (no stop ids)
