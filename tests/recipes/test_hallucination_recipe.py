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
                       (["limits.nq_opne=5"], "unknown key limits.nq_opne"),
                       (["scores.permutations=0"], "scores.rank_by=z needs scores.permutations >= 2"),
                       (["scores.rank_by=best"], "scores.rank_by"), (["teacher_forced.match=words"], "teacher_forced.match"),
                       (["judge.format_failure=drop"], "judge.format_failure")):
        with pytest.raises(EavssError, match=needle) as e:
            load_config(HallucinationConfig, None, ov)
        assert "\n" not in str(e.value)
    load_config(HallucinationConfig, None, ["scores.permutations=0", "scores.rank_by=effect"])  # the old ranking needs none


def test_sciq_format_failure_is_a_third_label():
    """A SciQ answer that names none of its options is a format failure: neither class, counted per source."""
    from eavss.config import load_config
    from eavss.hallucination.prompts import options_prompt
    from eavss.recipes.hallucination import FORMAT_FAILURE, HallucinationConfig, Sample, _source_summary, judge_samples

    opts = ["lungs", "heart", "liver", "kidney"]

    def sample(i, answer):
        return Sample(i, "sciq", f"q{i}", "generated", "Which organ pumps blood?", options_prompt("Which organ pumps blood?", opts),
                      ["heart"], answer=answer, options=opts, correct="heart", answer_ids=[5, 6] if answer else [])

    answers = ["Heart.", "the lungs", "a muscular pump", "", "I think it is the heart"]
    for mode, expect in (("exclude", [0, 1, FORMAT_FAILURE, -1, FORMAT_FAILURE]), ("hallucinated", [0, 1, 1, -1, 1])):
        cfg = load_config(HallucinationConfig, None, [f"judge.format_failure={mode}"])
        samples = [sample(i, a) for i, a in enumerate(answers)]
        judge_samples(samples, cfg)
        assert [s.label for s in samples] == expect
        assert [s.judge["detail"] for s in samples] == ["exact", "distractor", "no_option", "empty", "no_option"]
        d = _source_summary(samples)["sciq"]
        if mode == "exclude":
            rec = samples[2].record()
            assert rec["label_name"] == "format_failure" and rec["label"] is None
            assert (d["truthful"], d["hallucinated"], d["format_failures"], d["excluded"]) == (1, 1, 2, 1)
            assert d["hallucination_rate"] == pytest.approx(0.5) and d["format_failure_rate"] == pytest.approx(0.5)
        else:
            assert (d["truthful"], d["hallucinated"], d["format_failures"]) == (1, 3, 0)
            assert d["hallucination_rate"] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------
# the CLI end to end


@pytest.mark.parametrize("extra", [["--no-probe"], ["--no-probe", "stats.massive=1.01"], ["--with-avss", "--judge", "contains", "stats.first_answer_tokens=2"],
                                   ["--rank-by", "effect", "teacher_forced.match=none", "judge.format_failure=hallucinated",
                                    "--no-baselines"]])
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
    if "stats.massive=1.01" in extra:  # the massive-token rule reaches the statistics engine
        from eavss.stats.accumulators import LayerStatistics

        assert LayerStatistics.from_dict(rep["statistics"]["class_sums"]).n_massive().sum() > 0
    load_splits(out)
    md = (out / "report.md").read_text()
    assert "EAVSS ranking" in md and ("Probes were disabled" in md) == ("--no-probe" in extra)
    # ranking: by z unless asked otherwise; each layer's z and p are reported, the effect ranking too
    ev = rep["eavss"]
    assert ev["rank_by"] == ("effect" if "effect" in extra else "z") and sorted(ev["ranking_effect"]) == [0, 1, 2]
    for row in ev["per_layer"]:
        assert {"eavss_z", "p_eavss", "p_eavss_fwer", "rank", "rank_effect", "p_top_k"} <= set(row)
    key = "eavss_z" if ev["rank_by"] == "z" else "eavss"
    assert ev["ranking"] == sorted(range(3), key=lambda i: (-ev["per_layer"][i][key], i))
    assert "p (FWER)" in md and "significant" in md
    # length matching: lengths before/after per teacher-forced source
    lm = rep["sources"]["truthfulqa"]["length_match"]
    assert lm["match"] == ("none" if "teacher_forced.match=none" in extra else "length")
    assert set(lm["mean_tokens_before"]) == set(lm["mean_tokens_after"]) == {"truthful", "hallucinated"}
    # SciQ format failures: a label of their own unless judge.format_failure=hallucinated
    n_ff = sum(s["label_name"] == "format_failure" for s in samples)
    assert rep["sources"]["sciq"]["format_failures"] == n_ff
    if "judge.format_failure=hallucinated" in extra:
        assert n_ff == 0
    assert all(s["label"] is None for s in samples if s["label_name"] == "format_failure")
    # surface baselines beside the probe
    bl = rep["baselines"]
    if "--no-baselines" in extra:
        assert bl is None and "Surface baselines" not in md
    else:
        assert set(bl["auroc"]) == {"length", "first_tokens", "bag_of_tokens"} and "Surface baselines" in md
        assert (bl["comparison"] is None) == ("--no-probe" in extra)


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
    assert rep["agreement"]["spearman"] is not None and rep["eavss"]["rank_by"] == "z"
    assert set(rep["baselines"]["auroc"]) == {"length", "first_tokens", "bag_of_tokens"}
    assert rep["baselines"]["comparison"]["baseline"] in rep["baselines"]["auroc"]
    assert "format_failures" in rep["sources"]["sciq"] and "length_match" in rep["sources"]["truthfulqa"]
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
