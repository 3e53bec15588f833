"""`eavss mitigate` end to end: only the selected layers change, resume = uninterrupted, no leakage,
bad input refused with one line and nothing written; the real default model (slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mitigate_helpers import fake_analysis, mitigate_args, tiny_model_dir

FAST = ["eval.tasks=[wikiqa]", "eval.limits.wikiqa=2", "data.sources=[truthfulqa,halueval,sciq,nq_open]",
        "data.own_answers=[nq_open]"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mitigate")
    model = tiny_model_dir(root / "m")
    return root, model, fake_analysis(root / "h", model, ranking=[1, 3, 0, 2], probe=[0.9, 0.5, 0.6, 0.7])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _run(args, capsys=None):
    from eavss.cli import main

    rc = main(args)
    err = capsys.readouterr().err if capsys else ""
    return rc, err


@pytest.mark.parametrize("method", ["full", "lora"])
def test_only_the_selected_layers_change(setup, tmp_path, capsys, method):
    _, model, analysis = setup
    out = tmp_path / "out"
    rc, err = _run(mitigate_args(analysis, out, "--method", method, "train.lr=0.01", "--steps", "3", *FAST), capsys)
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["kind"] == "mitigate" and rep["variants"][0]["layers"] == [1, 3]  # ranking[:2], sorted
    before, after = _weights(model), _weights(out / "model")
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "training changed nothing"
    layer_of = {k: int(k.split(".")[2]) if k.startswith("model.layers.") else None for k in before}
    assert all(layer_of[k] in (1, 3) for k in changed), sorted(changed)
    if method == "lora":  # adapters on the linear maps only; norms untouched; the adapter folder is saved
        assert all(k.endswith("proj.weight") for k in changed)
        cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert sorted(cfg["layers_to_transform"]) == [1, 3]
    else:
        assert not (out / "adapter").exists()
        assert any("layernorm" in k for k in changed)  # full: every parameter of the layers trains
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "model")  # a plain folder (no peft needed)
    tr = rep["training"]["main"]
    assert tr["steps"] == 3 and len(tr["metrics_history"]["info_nce"]) == 3 and tr["resumed_from_step"] is None
    assert not Path(str(out) + ".work").exists()  # the work folder is removed after success


def test_resume_after_interruption_gives_identical_weights(setup, tmp_path, capsys, monkeypatch):
    from eavss.recipes import mitigate as mit

    _, _, analysis = setup
    common = ["--steps", "5", "train.checkpoint_every_steps=2", "train.lr=0.01", "mitigate.lora_dropout=0.1", *FAST]
    rc, err = _run(mitigate_args(analysis, tmp_path / "a", *common), capsys)
    assert rc == 0, err

    def interrupt(variant, info):
        if info["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(mit, "step_callback", interrupt)
    out_b = tmp_path / "b"
    rc, err = _run(mitigate_args(analysis, out_b, *common), capsys)
    assert rc == 130 and "run the same command again to resume" in err
    assert not out_b.exists()
    work = Path(str(out_b) + ".work")
    assert (work / "variants" / "main" / "checkpoint" / "checkpoint.pt").is_file() and (work / "base_eval" / "wikiqa.json").is_file()
    monkeypatch.undo()
    rc, err = _run(mitigate_args(analysis, out_b, *common), capsys)
    assert rc == 0, err
    rep = json.loads((out_b / "report.json").read_text())
    assert rep["training"]["main"]["resumed_from_step"] == 2
    tm = rep["timings"]  # the interrupted sitting's wall time is counted too
    assert len(tm["earlier_sittings"]) == 1 and tm["total_all_sittings"] == tm["total"] + tm["earlier_sittings"][0]
    assert "over 2 sittings" in (out_b / "report.md").read_text()
    wa, wb = _weights(tmp_path / "a" / "model"), _weights(out_b / "model")
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra = json.loads((tmp_path / "a" / "report.json").read_text())
    assert ra["training"]["main"]["loss_history"] == rep["training"]["main"]["loss_history"]
    # other settings with the same work folder are refused; --restart starts over
    monkeypatch.setattr(mit, "step_callback", interrupt)
    rc, _ = _run(mitigate_args(analysis, tmp_path / "c", *common), capsys)
    assert rc == 130
    monkeypatch.undo()
    rc, err = _run(mitigate_args(analysis, tmp_path / "c", *common, "train.lr=0.02"), capsys)
    assert rc == 2 and "other settings" in err and "train.lr:" in err and "\n" not in err.strip()
    rc, err = _run(mitigate_args(analysis, tmp_path / "c", *common, "train.lr=0.02", "--restart"), capsys)
    assert rc == 0, err


def test_train_and_eval_questions_are_disjoint_from_the_score_part(setup, tmp_path, capsys):
    from eavss.hallucination.splits import load_splits

    _, _, analysis = setup
    out = tmp_path / "out"
    rc, err = _run(mitigate_args(analysis, out, "--steps", "1", "eval.tasks=[wikiqa,sciq_mc,nq_open]",
                                 "eval.limits.wikiqa=3", "eval.limits.sciq_mc=3", "eval.limits.nq_open=2",
                                 "--no-save-model"), capsys)
    assert rc == 0, err
    ids = json.loads((out / "question_ids.json").read_text())
    splits = load_splits(analysis)
    for src, train in ids["train"].items():
        parts = splits["sources"][src]["parts"]
        assert train and set(train) <= set(parts["train"]) and len(train) == 3
        assert not set(train) & (set(parts["score"]) | set(parts["eval"]))
    for task, src in (("wikiqa", "wikiqa"), ("sciq_mc", "sciq"), ("nq_open", "nq_open")):
        ev = set(ids["eval"][task])
        parts = splits["sources"][src]["parts"]
        assert ev and not ev & set(parts["score"]) and not ev & set(parts["train"]) and not ev & set(ids["train"][src])
    rep = json.loads((out / "report.json").read_text())
    assert all(x["overlap_train"] == 0 and x["overlap_score"] == 0 for x in rep["data"]["leakage"].values())
    assert rep["outputs"]["model"] is None and not (out / "model").exists()
    ex = [json.loads(line) for line in (out / "train_examples.jsonl").read_text().splitlines()]
    assert {e["source"] for e in ex} >= {"truthfulqa", "halueval", "sciq", "wikiqa"}
    assert all(e["qid"] in ids["train"][e["source"]] for e in ex)
    own = [json.loads(line) for line in (out / "own_answers.jsonl").read_text().splitlines()]
    assert {o["source"] for o in own} == {"nq_open", "triviaqa"} and len(own) == 6
    assert all(e["negative_origins"] == ["own"] for e in ex if e["source"] in ("nq_open", "triviaqa"))
    md = (out / "report.md").read_text()
    assert "before [95% CI]" in md and "Leave one dataset out" not in md


def test_controls_and_lodo_variants(setup, tmp_path, capsys):
    _, _, analysis = setup
    out = tmp_path / "out"
    rc, err = _run(mitigate_args(analysis, out, "--steps", "1", "--controls", "--lodo", "controls.random_seeds=[0,1]",
                                 "lodo.datasets=[sciq,wikiqa]", "eval.tasks=[wikiqa]", "eval.limits.wikiqa=2",
                                 "eval.limits.sciq_mc=2", "--no-save-model", *FAST[2:]), capsys)
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    v = {x["name"]: x for x in rep["variants"]}
    assert v["main"]["layers"] == [1, 3] and v["lowest"]["layers"] == [0, 2] and v["probe"]["layers"] == [0, 3]
    assert v["lora_all"]["layers"] == [0, 1, 2, 3] and v["lora_all"]["contrast_layers"] == [1, 3]
    assert v["none"]["layers"] == [] and "none" not in rep["training"]
    assert {"random_s0", "random_s1"} <= set(v)
    for name in ("main", "random_s0", "random_s1", "lowest", "probe", "lora_all"):
        assert rep["training"][name]["steps"] == 1  # the same budget
    rows = rep["comparison"]["in_distribution"]
    names = {r["variant"] for r in rows if r["primary"]}
    assert names >= {"main", "random_s0", "random_s1", "random (mean)", "lowest", "probe", "lora_all", "none"}
    none = next(r for r in rows if r["variant"] == "none" and r["primary"])
    assert none["abs_change"] == 0 and none["verdict"] == "no change"
    for r in rows:
        assert set(r) >= {"before", "after", "abs_change", "abs_ci", "rel_change", "rel_ci", "verdict", "before_ci"}
    lodo = rep["comparison"]["lodo"]
    assert {r["heldout"] for r in lodo} == {"sciq", "wikiqa"}
    assert {r["task"] for r in lodo if r["heldout"] == "sciq"} == {"sciq_mc"}
    assert "sciq" not in v["lodo-sciq-main"]["sources"] and "wikiqa" not in v["lodo-wikiqa-main"]["sources"]
    assert {r["variant"] for r in lodo if r["heldout"] == "wikiqa"} == {"lodo-wikiqa-main", "lodo-wikiqa-random_s0",
                                                                        "lodo-wikiqa-probe", "lodo-wikiqa-none"}
    md = (out / "report.md").read_text()
    assert "Leave one dataset out" in md and "random (mean)" in md


# ---------------------------------------------------------------------------------------------
# bad input: one line, nothing written


def _bad(tmp_path, analysis, *extra):
    from eavss.cli import main

    out = tmp_path / "bad"
    rc = main(mitigate_args(analysis, out, *FAST, *extra))
    return rc, out


@pytest.mark.parametrize("extra,needle", [
    (["--k", "0"], "mitigate.k must be >= 1"),
    (["--k", "5"], "larger than the model's 4 decoder layers"),
    (["mitigate.layers=[0,9]"], "layer index 9 is out of range"),
    (["mitigate.layers=[1,1]"], "more than once"),
    (["--steps", "0"], "train.steps must be >= 1"),
    (["data.sources=[]"], "data.sources is empty"),
])
def test_bad_input_is_one_line_and_writes_nothing(setup, tmp_path, capsys, extra, needle):
    _, _, analysis = setup
    rc, out = _bad(tmp_path, analysis, *extra)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1, err
    assert not out.exists() and not Path(str(out) + ".work").exists()


def test_analysis_of_another_model_is_refused(setup, tmp_path, capsys):
    _, model, analysis = setup
    other = tiny_model_dir(tmp_path / "other", seed=1)
    rc, out = _bad(tmp_path, analysis, "--model", str(other))
    err = capsys.readouterr().err
    assert rc == 2 and "was made on" in err and "sha256" in err and err.count("\n") == 1, err
    assert not out.exists() and not Path(str(out) + ".work").exists()
    deeper = tiny_model_dir(tmp_path / "deep", num_layers=5)
    a2 = fake_analysis(tmp_path / "h5", deeper, num_layers=5)
    rc, out = _bad(tmp_path, a2, "--model", str(model))
    assert rc == 2 and "was made on" in capsys.readouterr().err


def test_empty_train_part_is_refused(setup, tmp_path, capsys):
    _, model, _ = setup
    a = fake_analysis(tmp_path / "h0", model, fractions=(0.75, 0.0, 0.25))
    rc, out = _bad(tmp_path, a)
    err = capsys.readouterr().err
    assert rc == 2 and "train part of source" in err and "is empty" in err and err.count("\n") == 1, err
    assert not out.exists() and not Path(str(out) + ".work").exists()


def test_not_an_analysis_folder(tmp_path, capsys):
    from eavss.cli import main

    (tmp_path / "x").mkdir()
    rc = main(["mitigate", "--from", str(tmp_path / "x"), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "not found" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# the real default model


@pytest.mark.slow
def test_end_to_end_on_default_model(tmp_path, capsys, default_model):
    from eavss.cli import main

    h = tmp_path / "h"
    rc = main(["hallucination", "--limit", "6", "--out", str(h), "--no-progress", "--batch-size", "8",
               "scores.bootstrap=10", "scores.permutations=10", "scores.min_per_class=2", "probe.folds=3"])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "m"
    rc = main(["mitigate", "--from", str(h), "--out", str(out), "--no-progress", "--limit", "2", "--eval-limit", "2",
               "--steps", "2", "eval.limits.ppl=1", "eval.ppl_context_length=128", "eval.truthfulqa_max_gen_toks=16",
               "eval.resamples=100", "train.batch_size=2", "data.max_negatives=2", "--k", "3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rep = json.loads((out / "report.json").read_text())
    top = json.loads((h / "report.json").read_text())["eavss"]["ranking"][:3]
    assert rep["variants"][0]["layers"] == sorted(top)
    assert set(rep["evaluation"]["base"]) == {"nq_open", "triviaqa", "sciq_mc", "truthfulqa", "wikiqa", "ppl", "sst2"}
    for r in rep["evaluation"]["base"].values():
        assert r["n_samples"] >= 1 and r["details"]["ci"]
    assert rep["training"]["main"]["steps"] == 2 and rep["training"]["main"]["tokens_per_second"] > 0
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(out / "model")
    assert m.config.num_hidden_layers == default_model.info["num_layers"]
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert "trained layers" in captured.out
