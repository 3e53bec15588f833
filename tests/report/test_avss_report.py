"""report.md of a run: evaluation table with intervals, items, chance-corrected retention and the
capability note; per-item arrays stay out of the markdown."""

from __future__ import annotations

from eavss.evaluation import harness
from eavss.report.avss import eval_table, render_markdown, results_table


def _res(metric, value, ci, n, total, per_item=None):
    return {"metrics": {metric: value}, "ci": {metric: ci}, "n_samples": n, "n_total": total,
            "item_ids": list(range(n)), "per_item": per_item or {"columns": {"x": [0.123456789] * n}},
            "bootstrap": {"level": 0.95}}


def _evaluation():
    orig = {"ppl": _res("token_perplexity", 20.0, [18.0, 22.5], 8, 290),
            "wikitext2": _res("word_perplexity", 30.0, [25.0, 36.0], 2, 62),
            "sst2": _res("acc", 0.56, [0.49, 0.63], 200, 872)}
    pruned = {"ppl": _res("token_perplexity", 40.0, [35.0, 45.0], 8, 290),
              "wikitext2": _res("word_perplexity", 90.0, [80.0, 99.0], 2, 62),
              "sst2": _res("acc", 0.52, [0.45, 0.59], 200, 872)}
    ret = harness.retention({k: {"metrics": v["metrics"]} for k, v in orig.items()},
                            {k: {"metrics": v["metrics"]} for k, v in pruned.items()})
    ret["ppl"]["ci"] = [45.0, 55.0]
    ret["sst2"]["original_ci"] = [0.49, 0.63]
    ret["sst2"]["near_chance"] = True
    ret["sst2"]["note"] = "sst2: the original model is not clearly above chance on acc"
    return {"original": orig, "pruned": pruned, "retention": ret, "mean_retention": harness.mean_retention(ret),
            "limits": {"sst2": 200}}


def test_eval_table_shows_intervals_items_chance_and_duplicates():
    ev = _evaluation()
    table = eval_table(ev)
    assert "| ppl | token_perplexity | 20.0000 [18.0000, 22.5000] | 40.0000 [35.0000, 45.0000] | 8 of 290 | " \
           "50.0 [45.0, 55.0] | – |" in table
    assert "| sst2 | acc | 0.5600 [0.4900, 0.6300] |" in table
    # chance-corrected 100 * (0.52 - 0.5) / (0.56 - 0.5) = 33.3, flagged; raw ratio 100 * 0.52 / 0.56 = 92.9
    assert "| 92.9 | 33.3 (chance 0.5) ⚠ |" in table
    assert "Excluded from the mean as duplicate capabilities: wikitext2 (WikiText-2 language modelling: counted " \
           "through ppl)" in table
    assert "not clearly above chance" in table
    assert "0.123456789" not in table  # per-item values are not in the markdown
    md = render_markdown({"kind": "run", "evaluation": ev, "config": {}, "seed": 0})
    assert "Mean retention over ppl (one task per capability): **50.0%**" in md
    assert "0.123456789" not in md
    assert "8 of 290" in results_table(ev["original"])


def test_ground_truth_table_shows_spearman_intervals_and_reads_older_reports():
    """Each score's Spearman with its 95 % interval (schema 2.3); a report written before the
    interval existed still renders, without it."""
    from eavss.report.avss import ground_truth_table

    gt = {"definition": "skip cost", "num_samples": 4, "num_tokens": 100, "base_loss": 2.0, "k": 2, "best_score": "bi",
          "agreement": {"bi": {"spearman": 0.79, "spearman_ci": [0.594, 0.897], "p_value": 2e-7, "overlap": 2, "k": 2,
                               "cost": 1.0, "oracle_cost": 0.9, "removed": [3, 4]},
                        "avss": {"spearman": 0.19, "p_value": 0.32, "overlap": 0, "k": 2, "cost": 5.0,
                                 "oracle_cost": 0.9, "removed": [0, 1]}}}
    md = ground_truth_table(gt)
    assert "| Spearman [95% CI] |" in md
    assert "| bi | 0.79 [0.59, 0.90] |" in md and "| avss | 0.19 |" in md
