"""`eavss score` on a tiny model: the ground-truth section equals an explicit layer-skip loss, and
every score's agreement with it is what rank_agreement/removal_cost give."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eavss.cli import main


def test_score_report_holds_the_ground_truth(tmp_path, capsys):
    from eavss.data.calibration import calibration_batches, load_calibration_texts
    from eavss.models.loading import load_model
    from eavss.models.surgery import save_model
    from eavss.scores.ablation import layer_skip_loss
    from eavss.scores.agreement import rank_agreement, removal_cost
    from eavss.testing.tiny import TINY_TEXT, tiny_loaded

    lm = tiny_loaded("llama", seed=5, num_layers=5)
    save_model(lm.model, lm.tokenizer, tmp_path / "m")
    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(ln for ln in TINY_TEXT.splitlines() if ln.strip()))
    out = tmp_path / "o"
    assert main(["score", "--model", str(tmp_path / "m"), "--calib", f"text:{cal}", "--num-samples", "6",
                 "--max-length", "24", "ground_truth.num_samples=4", "--fraction", "0.4", "--out", str(out),
                 "--no-progress"]) == 0
    rep = json.loads((out / "report.json").read_text())
    gt = rep["ground_truth"]
    assert gt["num_samples"] == 4 and gt["k"] == 2 and len(gt["delta"]) == 5

    loaded = load_model(str(tmp_path / "m"))
    texts = load_calibration_texts(f"text:{cal}")
    batches, _ = calibration_batches(loaded.tokenizer, f"text:{cal}", 4, 24, 8, "documents", 0, texts=texts)
    ref = layer_skip_loss(loaded.model, batches)
    np.testing.assert_allclose(gt["delta"], ref["delta"], rtol=1e-5, atol=1e-6)
    assert gt["base_loss"] == pytest.approx(ref["base_loss"], rel=1e-6)
    for name, a in gt["agreement"].items():
        score = rep["scores"][name]["score"]
        ra, rc = rank_agreement(score, ref["delta"], 2), removal_cost(score, ref["delta"], 2)
        assert a["spearman"] == pytest.approx(ra["spearman"]) and a["removed"] == rc["removed"]
    md = (out / "report.md").read_text()
    assert "Does the score measure the layer?" in md and "skip Δloss" in md


def test_run_evaluates_block_influence_and_random_beside_the_score(tmp_path, capsys):
    """The main job's comparison: the same k layers chosen by block influence and at random, each
    evaluated with its layers skipped in place -- equal to evaluating an explicitly pruned copy."""
    import copy

    from eavss.evaluation.harness import evaluate
    from eavss.models.loading import load_model
    from eavss.models.surgery import remove_layers, save_model
    from eavss.prune.baselines import random_layers
    from eavss.testing.tiny import TINY_TEXT, tiny_loaded

    lm = tiny_loaded("llama", seed=6, num_layers=6)
    save_model(lm.model, lm.tokenizer, tmp_path / "m")
    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(ln for ln in TINY_TEXT.splitlines() if ln.strip()))
    out = tmp_path / "o"
    assert main(["run", "--model", str(tmp_path / "m"), "--calib", f"text:{cal}", "--num-samples", "6",
                 "--max-length", "24", "ground_truth.num_samples=2", "--tasks", "ppl", "--limit", "1",
                 "eval.ppl_context_length=64", "--fraction", "0.34", "--out", str(out), "--no-progress",
                 "--no-save-model", "--score", "avss"]) == 0
    rep = json.loads((out / "report.json").read_text())
    alt = rep["evaluation"]["alternatives"]
    assert set(alt) == {"block_influence", "random"}  # the score pruned by is not repeated
    bi = np.asarray(rep["scores"]["block_influence"]["score"])
    assert alt["block_influence"]["removed"] == sorted(np.argsort(bi, kind="stable")[:2].tolist())
    assert alt["random"]["removed"] == random_layers(6, 2, 0)
    loaded = load_model(str(tmp_path / "m"))
    pruned = copy.deepcopy(loaded.model)
    remove_layers(pruned, alt["random"]["removed"])
    ref = evaluate(pruned, loaded.tokenizer, ["ppl"], limit=1, task_options={"ppl": {"context_length": 64}})
    got = alt["random"]["results"]["ppl"]["metrics"]["token_perplexity"]
    assert got == pytest.approx(ref["ppl"]["metrics"]["token_perplexity"], rel=1e-5)
    md = (out / "report.md").read_text()
    assert "chosen another way" in md and "retention % [95 % paired bootstrap CI]" in md
    from eavss.report.common import format_number

    ci = alt["random"]["mean_retention"]["ci"]
    line = next(ln for ln in md.splitlines() if ln.startswith("| random |"))
    assert ci is None or f"[{format_number(ci[0], 1)}, {format_number(ci[1], 1)}]" in line
