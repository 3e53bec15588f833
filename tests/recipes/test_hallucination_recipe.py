"""`eavss hallucination` end to end: a tiny model (every code path) and the real default model."""

from __future__ import annotations

import json

import pytest

from eavss.errors import EavssError
from eavss.hallucination.splits import load_splits
from eavss.testing.tiny import tiny_model, tiny_tokenizer

TAU = 0.01



def test_bad_config_is_one_line():
    from eavss.config import load_config
    from eavss.recipes.hallucination import HallucinationConfig

    for ov, needle in ((["sources=[foo]"], "sources='foo' is not valid"), (["split.score=0.9"], "sum to 1"),
                       (["scores.combine=max"], "scores.combine"), (["stats.variance=pooled"], "stats.variance"),
                       (["probe.folds=1"], "probe.folds"), (["sources=[]"], "sources is empty"),
                       (["limits.nq_opne=5"], "unknown key limits.nq_opne")):
        with pytest.raises(EavssError, match=needle) as e:
            load_config(HallucinationConfig, None, ov)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# the CLI end to end


@pytest.mark.parametrize("extra", [["--no-probe"], ["--with-avss", "--judge", "contains", "stats.first_answer_tokens=2"]])
def test_cli_end_to_end_on_a_tiny_model(tmp_path, capsys, extra):
    """All code paths of the command on a tiny saved model (fast); the real model is tested below."""
    from eavss.cli import main

    model, tok = tiny_model("llama", seed=0, num_layers=3), tiny_tokenizer()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "h"
    rc = main(["hallucination", "--model", str(tmp_path / "m"), "--sources", "truthfulqa,halueval,sciq", "--limit", "6",
               "--out", str(out), "--no-progress", "--max-new-tokens", "4", "--top-k", "2", *extra, "scores.bootstrap=5",
               "scores.permutations=5", "scores.min_per_class=2", "probe.folds=2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["eavss"]["top_k"]) == 2 and sorted(rep["eavss"]["ranking"]) == [0, 1, 2]
    assert (rep["probe"] is None) == ("--no-probe" in extra)
    assert rep["sources"]["sciq"]["kind"] == "generated"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * 2 * 2 + 6
    if "stats.first_answer_tokens=2" in extra:
        assert all(s["n_counted_tokens"] <= 2 for s in samples)
        assert rep["config"]["scores"]["with_avss"] and rep["judge"]["match"] == "contains"
    load_splits(out)
    md = (out / "report.md").read_text()
    assert "EAVSS ranking" in md and ("Probes were disabled" in md) == ("--no-probe" in extra)


# the real default model


@pytest.mark.slow
def test_cli_end_to_end_on_default_model(tmp_path, capsys, default_model):
    from eavss.cli import main

    out = tmp_path / "h"
    rc = main(["hallucination", "--limit", "6", "--out", str(out), "--no-progress", "--batch-size", "8",
               "scores.bootstrap=10", "scores.permutations=10", "scores.min_per_class=2", "probe.folds=3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "EAVSS top-5 layers" in captured.out
    for f in ("report.json", "report.md", "eavss.png", "separability.png", "splits.json", "samples.jsonl"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    rep = json.loads((out / "report.json").read_text())
    assert rep["kind"] == "hallucination" and rep["schema"] == "eavss.report"
    L = rep["model"]["num_layers"]
    assert sorted(rep["eavss"]["ranking"]) == list(range(L)) and len(rep["eavss"]["top_k"]) == 5
    assert len(rep["eavss"]["per_layer"]) == L and len(rep["probe"]["auroc"]) == L
    assert rep["agreement"]["spearman"] is not None
    assert set(rep["sources"]) == {"truthfulqa", "halueval", "nq_open", "triviaqa", "sciq", "wikiqa"}
    for src in ("nq_open", "triviaqa", "sciq"):
        assert rep["sources"][src]["kind"] == "generated"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * 2 * 3 + 6 * 3  # three teacher-forced pair sources, three generated
    assert all(s["judge"] is not None for s in samples if s["kind"] == "generated")
    splits = load_splits(out)
    for src, d in splits["sources"].items():
        used = {s["qid"] for s in samples if s["source"] == src}
        assert used == set(d["used_here"]) and used <= set(d["parts"]["score"])
        assert not used & (set(d["parts"]["train"]) | set(d["parts"]["eval"]))
    md = (out / "report.md").read_text()
    for needle in ("Hallucination rate per source", "EAVSS ranking", "Spearman", "Per-layer table", "stop rule"):
        assert needle in md
    # an existing output folder is refused with a one-line error
    rc = main(["hallucination", "--limit", "2", "--out", str(out), "--no-progress"])
    assert rc == 2 and "already exists" in capsys.readouterr().err
