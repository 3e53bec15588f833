"""`eavss compare` on a tiny model: seeded runs repeat to the last digit, every number in the report
is what the library gives, and bad input is one line with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eavss.cli import main
from eavss.errors import EavssError

_VOLATILE = {"created", "timings", "threads", "seconds", "load_seconds", "tokens_per_second", "peak_memory_bytes",
             "statistics_passes", "code", "environment", "out"}


def _stable(obj):
    """The report without wall-clock times, dates and machine state."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from eavss.models.surgery import save_model
    from eavss.testing import tiny_loaded
    from eavss.testing.tiny import TINY_TEXT

    d = tmp_path_factory.mktemp("cmp")
    lm = tiny_loaded("llama", seed=3, num_layers=5)
    save_model(lm.model, lm.tokenizer, d / "m")
    cal = d / "cal.txt"
    cal.write_text("\n".join(ln for ln in TINY_TEXT.splitlines() if ln.strip()))
    return d / "m", cal


def _argv(model, cal, out, *extra):
    return ["compare", "--model", str(model), "--calib", f"text:{cal}", "--num-samples", "8", "--max-length", "32",
            "ground_truth.num_samples=4", "--fraction", "0.4", "--tasks", "ppl,sciq", "--limit", "2",
            "eval.ppl_context_length=64", "eval.ppl_max_tokens=128", "--threads", "1", "--no-progress",
            "--out", str(out), *extra]


_HEAL = ["--heal", "heal.num_samples=6", "heal.max_length=32", "heal.held_out=2", "heal.packing=documents",
         "heal.batch_size=2", "--heal-steps", "2", "--heal-lr", "0.01"]


@pytest.fixture(scope="module")
def healed_runs(tiny_folder, tmp_path_factory):
    """Two identical seeded runs with healing (a subset of metrics keeps the test short)."""
    model, cal = tiny_folder
    d = tmp_path_factory.mktemp("runs")
    outs = []
    for name in ("a", "b"):
        out = d / name
        assert main(_argv(model, cal, out, "--metrics", "avss,block_influence,layer_ppl,sleb,random,last",
                          "--random-seeds", "2", "--heal-data", f"text:{cal}", *_HEAL)) == 0
        outs.append(out)
    return outs


def test_seeded_runs_repeat_to_the_last_digit(healed_runs):
    a, b = (json.loads((o / "report.json").read_text()) for o in healed_runs)
    assert _stable(a) == _stable(b)
    assert (healed_runs[0] / "report.md").is_file() and (healed_runs[0] / "compare.png").stat().st_size > 0


def test_report_numbers_are_the_library_numbers(healed_runs, tiny_folder):
    from eavss.data.calibration import calibration_batches, load_calibration_texts
    from eavss.evaluation.harness import retention
    from eavss.models.loading import load_model
    from eavss.models.surgery import remove_layers, skip_layers
    from eavss.prune.metrics import METRICS, MetricContext
    from eavss.scores.ablation import calibration_loss, layer_skip_loss
    from eavss.scores.agreement import rank_agreement, removal_cost

    model_dir, cal = tiny_folder
    rep = json.loads((healed_runs[0] / "report.json").read_text())
    assert rep["kind"] == "compare" and rep["settings"]["k"] == 2 and rep["settings"]["num_layers"] == 5
    lm = load_model(str(model_dir))
    texts = load_calibration_texts(f"text:{cal}")
    batches, _ = calibration_batches(lm.tokenizer, f"text:{cal}", 8, 32, 8, "documents", 0, texts=texts)
    loss_batches, _ = calibration_batches(lm.tokenizer, f"text:{cal}", 4, 32, 8, "documents", 0, texts=texts)

    skip = layer_skip_loss(lm.model, loss_batches)
    gt = rep["ground_truth"]
    np.testing.assert_allclose(gt["delta"], skip["delta"], rtol=1e-9, atol=1e-12)
    assert gt["oracle_removed"] == removal_cost(skip["delta"], skip["delta"], 2)["oracle_removed"]

    ctx = MetricContext(lm.model, batches, loss_batches=loss_batches)
    assert list(rep["rows"]) == ["avss", "block_influence", "layer_ppl", "sleb", "random(seed=0)", "random(seed=1)",
                                 "last"]
    for row, r in rep["rows"].items():
        ctx.seed = r["seed"] if r["seed"] is not None else 0
        ref = METRICS[r["metric"]](ctx, 2)
        assert r["removed"] == ref["removed"], row
        if ref["score"] is not None:
            np.testing.assert_allclose(r["score"], ref["score"], rtol=1e-9)
            ra = rank_agreement(ref["score"], skip["delta"], 2)
            assert r["ground_truth_cost"]["spearman_with_ground_truth"] == pytest.approx(ra["spearman"])
        c = r["ground_truth_cost"]
        assert c["cost"] == pytest.approx(float(np.sum(np.asarray(skip["delta"])[r["removed"]])))
        with skip_layers(lm.model, r["removed"]):
            joint = calibration_loss(lm.model, loss_batches)["loss"]
        assert c["joint_loss_increase"] == pytest.approx(joint - skip["base_loss"])
        # retention is the harness's, against the one evaluation of the original
        ret = retention(rep["evaluation"]["original"], r["evaluation"])
        for task, e in ret.items():
            assert r["retention"][task]["retention_pct"] == pytest.approx(e["retention_pct"])
        assert r["params_after"] < r["params_before"]
        h = r["healing"]
        assert h["train"]["steps"] == 2 and set(h["vs_healed_unpruned"]["retention"]) == {"ppl", "sciq"}
    # the parameter count of a pruned copy
    m = load_model(str(model_dir)).model
    remove_layers(m, rep["rows"]["last"]["removed"])
    assert rep["rows"]["last"]["params_after"] == sum(p.numel() for p in m.parameters())
    # the agreement matrix: symmetric, ones on the diagonal, over the rows that have a score
    ag = rep["agreement"]
    assert ag["scored"] == ["avss", "block_influence", "layer_ppl"]
    rho = np.array(ag["spearman"], dtype=float)
    np.testing.assert_allclose(rho, rho.T) and np.testing.assert_allclose(np.diag(rho), 1.0)
    assert rep["random"]["random"]["seeds"] == [0, 1]
    assert rep["healing"]["unpruned"]["train"]["steps"] == 2
    # paired differences: the library's, from each row's own retention draws (same items, same resamples)
    from eavss.evaluation.harness import mean_retention
    from eavss.evaluation.intervals import paired_difference

    mm = {r: mean_retention(retention(rep["evaluation"]["original"], v["evaluation"]), keep_draws=True)
          for r, v in rep["rows"].items()}
    pb = rep["paired"]["before"]
    best = max(mm, key=lambda r: mm[r]["mean_pct"])
    rand = [r for r, v in rep["rows"].items() if v["seed"] is not None]
    assert pb["best"] == best and pb["random_rows"] == rand
    rand_draws = np.mean([[np.nan if x is None else x for x in mm[r]["draws"]] for r in rand], axis=0)
    for r in rep["rows"]:
        ref = paired_difference(mm[r]["mean_pct"], mm[best]["mean_pct"], mm[r]["draws"], mm[best]["draws"])
        assert pb["rows"][r]["vs_best"]["diff"] == pytest.approx(ref["diff"])
        assert pb["rows"][r]["vs_best"]["ci"] == pytest.approx(ref["ci"])
        ref = paired_difference(mm[r]["mean_pct"], float(np.mean([mm[x]["mean_pct"] for x in rand])), mm[r]["draws"],
                                list(rand_draws))
        assert pb["rows"][r]["vs_random_mean"]["diff"] == pytest.approx(ref["diff"])
        assert pb["rows"][r]["vs_random_mean"]["ci"] == pytest.approx(ref["ci"])
    assert pb["rows"][best]["vs_best"] == {"diff": 0.0, "ci": [0.0, 0.0], "resamples": 1000}
    assert rep["paired"]["healed_vs_healed_unpruned"]["rows"].keys() == rep["rows"].keys()
    assert '"draws"' not in json.dumps(rep["rows"]) + json.dumps(rep["healing"])  # kept in the work folder only
    md = (healed_runs[0] / "report.md").read_text()
    for needle in ("Which layers each metric removes", "Retention", "Do the metrics agree", "Control: the unpruned",
                   "against the healed unpruned model", "oracle", "paired differences", f"minus the best ({best})"):
        assert needle in md, needle


def test_compare_paired_script_recomputes_the_reports_paired_differences(healed_runs, capsys):
    """scripts/compare_paired.py on a report without ``paired`` (an earlier schema) recomputes it from
    the per-item results, equal to what the run itself stored; on a report with it, prints it."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("compare_paired",
                                                  Path(__file__).parents[2] / "scripts" / "compare_paired.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rep = json.loads((healed_runs[0] / "report.json").read_text())
    stored = rep.pop("paired")
    again = json.loads(json.dumps(mod.paired_from_report(rep)))
    assert again["before"]["best"] == stored["before"]["best"]
    for part in ("before", "healed_vs_healed_unpruned"):
        for row, e in stored[part]["rows"].items():
            for key in ("vs_best", "vs_random_mean"):
                assert again[part]["rows"][row][key]["diff"] == pytest.approx(e[key]["diff"])
                assert again[part]["rows"][row][key]["ci"] == pytest.approx(e[key]["ci"])
    assert mod.main([str(healed_runs[0] / "report.json")]) == 0
    assert "minus the best" in capsys.readouterr().out
    assert mod.main([str(healed_runs[0] / "report.md")]) == 2 and "cannot read" in capsys.readouterr().err


def test_every_metric_in_one_run_without_healing(tiny_folder, tmp_path, capsys):
    model, cal = tiny_folder
    out = tmp_path / "all"
    assert main(_argv(model, cal, out, "--random-seeds", "1", "--tasks", "ppl")) == 0
    rep = json.loads((out / "report.json").read_text())
    from eavss.prune.metrics import METRICS

    assert [r["metric"] for r in rep["rows"].values()] == METRICS.names() and rep["healing"] is None
    assert all(len(r["removed"]) == 2 for r in rep["rows"].values())
    assert "k = 2 of 5 layers" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needle", [
    (["--metrics", "avss,nope"], "compare.metrics='nope' is not valid"),
    (["--fraction", "0.1"], "rounds down to k=0"),
    (["--metrics", ""], "--metrics is empty"),
    (["--heal", "--heal-data", "sst2"], "ptb and sst2 are evaluation domains"),
    (["--tasks", "nosuchtask"], "eval.tasks='nosuchtask' is not valid"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_folder, tmp_path, capsys, extra, needle):
    model, cal = tiny_folder
    out = tmp_path / "o"
    rc = main(_argv(model, cal, out, *extra))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("eavss: error: ") and "\n" not in err and needle in err, err
    assert not out.exists()


def test_heal_on_a_folder_that_is_not_a_model_is_one_line(tmp_path, tiny_folder, capsys):
    _, cal = tiny_folder
    bad = tmp_path / "notamodel"
    bad.mkdir()
    (bad / "weights.txt").write_text("no")
    out = tmp_path / "o"
    rc = main(_argv(bad, cal, out, "--heal"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "has no config.json" in err
    assert not out.exists()


@pytest.mark.slow
def test_compare_and_heal_end_to_end_on_default_model(tmp_path, capsys, default_model):
    out = tmp_path / "cmp"
    rc = main(["compare", "--metrics", "avss,block_influence,layer_ppl,angular,last", "--num-samples", "4",
               "--max-length", "32", "ground_truth.num_samples=2", "--tasks", "ppl", "--limit", "1",
               "eval.ppl_context_length=128", "--heal", "--heal-steps", "1", "heal.num_samples=2", "heal.max_length=32",
               "heal.held_out=1", "heal.batch_size=2", "--no-progress", "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"] == {"num_layers": 30, "k": 7, "fraction": 0.25,
                               "rule": "k = floor(fraction * L) layers removed by every metric"}
    assert rep["rows"]["last"]["removed"] == list(range(22, 29))
    assert rep["healing"]["text"]["disjoint_from_evaluation"] is True
    for r in rep["rows"].values():
        assert r["retention"]["ppl"]["retention_pct"] is not None and r["healing"]["vs_healed_unpruned"]
    assert (out / "compare.png").stat().st_size > 0


def test_interrupted_run_resumes_to_the_uninterrupted_report(healed_runs, tiny_folder, tmp_path, capsys, monkeypatch):
    """Ctrl-C after the first pruned row: the work folder keeps the finished steps, the same command
    finishes the rest without redoing them, and the report equals an uninterrupted run's."""
    import eavss.recipes.compare as cmp

    model, cal = tiny_folder
    out = tmp_path / "r"
    argv = _argv(model, cal, out, "--metrics", "avss,block_influence,layer_ppl,sleb,random,last", "--random-seeds",
                 "2", "--heal-data", f"text:{cal}", *_HEAL)
    real = cmp._evaluate
    calls = {"n": 0}

    def interrupting(cfg, m, tok):
        calls["n"] += 1
        if calls["n"] == 5:  # original, healed control, row 1 + its healed copy: then Ctrl-C
            raise KeyboardInterrupt
        return real(cfg, m, tok)

    monkeypatch.setattr(cmp, "_evaluate", interrupting)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and not out.exists()
    work = tmp_path / "r.work"
    assert len(json.loads((work / "steps.json").read_text())) == 3  # original, healed control, one row

    calls["n"] = 0
    monkeypatch.setattr(cmp, "_evaluate", lambda cfg, m, tok: (calls.__setitem__("n", calls["n"] + 1), real(cfg, m, tok))[1])
    assert main(argv) == 0
    assert not work.exists()  # removed after success (keep_work=false)
    resumed = json.loads((out / "report.json").read_text())
    whole = json.loads((healed_runs[0] / "report.json").read_text())
    n_sets = len({tuple(r["removed"]) for r in whole["rows"].values()})  # rows removing the same layers share
    assert calls["n"] == 2 * (n_sets - 1)  # the first row kept: each remaining set evaluated pruned and healed
    assert _stable(resumed) == _stable(whole)
    assert set(resumed["timings"]) == set(whole["timings"])  # the kept steps' seconds are in the report


def test_rows_removing_the_same_layers_are_evaluated_once(tiny_folder, tmp_path, monkeypatch, capfd):
    """Two rows that remove the same layers are one pruned model: evaluated and healed once, the later
    row marked ``same_layers_as`` with the first row's numbers, and the report says so."""
    import eavss.recipes.compare as cmp

    real_choose, real_eval = cmp.choose_layers, cmp._evaluate

    def choose(cfg, ctx, k):
        sel = real_choose(cfg, ctx, k)
        sel["last"]["removed"] = list(sel["avss"]["removed"])
        return sel

    calls = []
    monkeypatch.setattr(cmp, "choose_layers", choose)
    monkeypatch.setattr(cmp, "_evaluate", lambda cfg, m, tok: (calls.append(1), real_eval(cfg, m, tok))[1])
    model, cal = tiny_folder
    out = tmp_path / "d"
    assert main(_argv(model, cal, out, "--metrics", "avss,block_influence,last", "--heal-data", f"text:{cal}",
                      *_HEAL)) == 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    n_sets = len({tuple(r["removed"]) for r in rows.values()})
    assert n_sets <= 2 and len(calls) == 2 + 2 * n_sets  # original, healed control; each set pruned + healed
    assert rows["last"]["same_layers_as"] == "avss" and "same_layers_as" not in rows["avss"]
    for key in ("evaluation", "retention", "mean_retention", "healing", "params_after"):
        assert rows["last"][key] == rows["avss"][key], key
    assert rows["last"]["metric"] == "last" and rows["last"]["score"] is None  # its own selection facts
    assert "| last (same layers as avss) |" in (out / "report.md").read_text()
    assert "Running loglikelihood requests" not in capfd.readouterr().err  # --no-progress reaches lm-eval


def test_work_folder_of_other_settings_is_refused(tiny_folder, tmp_path, capsys):
    model, cal = tiny_folder
    out = tmp_path / "r"
    work = tmp_path / "r.work"
    work.mkdir()
    (work / "fingerprint.json").write_text(json.dumps({"fingerprint": "0" * 64}))
    (work / "steps.json").write_text("{}")  # a finished step of that other run
    assert main(_argv(model, cal, out, "--metrics", "block_influence,last")) == 2
    err = capsys.readouterr().err
    assert "holds the state of a run with other settings" in err and "--restart" in err and not out.exists()
    assert main(_argv(model, cal, out, "--metrics", "block_influence,last", "--restart")) == 0


def test_refused_resume_names_the_settings_that_differ(tiny_folder, tmp_path, capsys):
    """The work folder keeps the settings behind its fingerprint; a resume with others names them."""
    from eavss.recipes.common import settings_digest

    model, cal = tiny_folder
    out = tmp_path / "r"
    args = ["--metrics", "block_influence,last", "keep_work=true"]
    assert main(_argv(model, cal, out, *args)) == 0
    marker = json.loads((tmp_path / "r.work" / "fingerprint.json").read_text())
    assert settings_digest(marker["settings"]) == marker["fingerprint"]
    assert marker["settings"]["config"]["eval"]["batch_size"] != 3
    capsys.readouterr()
    assert main(_argv(model, cal, tmp_path / "r2", *args, f"work_dir={tmp_path / 'r.work'}",
                      "eval.batch_size=3")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eavss: error:")]
    assert len(err) == 1 and "eval.batch_size:" in err[0] and "3 now" in err[0] and "--restart" in err[0]
    assert not (tmp_path / "r2").exists()


def test_work_folder_with_only_another_runs_marker_is_started_over(tmp_path):
    """Interrupted before any step finished (only the marker): nothing to protect, so no refusal."""
    from eavss.recipes.common import fingerprint_settings, open_work, settings_digest

    work = tmp_path / "r.work"
    work.mkdir()
    (work / "fingerprint.json").write_text(json.dumps({"fingerprint": "0" * 64}))
    one, two = fingerprint_settings({"seed": 1}), fingerprint_settings({"seed": 2})
    assert open_work(work, one, True, "compare", str(tmp_path / "r")) == work
    assert json.loads((work / "fingerprint.json").read_text())["fingerprint"] == settings_digest(one)
    (work / "steps.json").write_text("{}")
    with pytest.raises(EavssError, match="other settings"):
        open_work(work, two, True, "compare", str(tmp_path / "r"))


@pytest.mark.parametrize("extra, named", [
    (["--heal-steps", "3"], "--heal-steps"),
    (["heal.lr=0.1", "--heal-data", "text:/x.txt"], "--heal-data, heal.lr"),
])
def test_healing_settings_without_heal_are_refused(tmp_path, capsys, extra, named):
    """--heal-data / --heal-steps / heal.* on the command line without --heal would be ignored: one line."""
    out = tmp_path / "r"
    assert main(["compare", "--model", str(tmp_path / "m"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "only act with --heal" in err and not out.exists()


def test_healing_settings_from_a_config_file_are_not_refused(tmp_path, capsys):
    """A --config file may set heal.* for runs with and without --heal (compare.yaml does)."""
    from eavss.cli import _command_parser, resolve
    from eavss.recipes import RECIPES

    recipe = RECIPES["compare"]
    args = _command_parser(recipe).parse_intermixed_args(["--config", "src/eavss/configs/compare.yaml", "--out",
                                                          str(tmp_path / "r"), "seed=1"])
    cfg = resolve(recipe, args)
    assert cfg.heal.steps == 100 and not cfg.compare.heal
    args = _command_parser(recipe).parse_intermixed_args(["--heal", "--heal-steps", "7", "--out", str(tmp_path / "r")])
    assert resolve(recipe, args).heal.steps == 7


def test_settings_diff_names_keys_values_and_the_rest():
    from eavss.recipes.common import fingerprint_settings, settings_diff

    old = fingerprint_settings({"eval": {"batch_size": 32, "tasks": ["a"]}, "seed": 0, "x": 1, "y": 2}, model="m1")
    new = fingerprint_settings({"eval": {"batch_size": 16, "tasks": ["a"]}, "seed": 1, "x": 2, "y": 3}, model="m1")
    assert settings_diff(old, new, limit=2) == ("eval.batch_size: 32 in the folder, 16 now; seed: 0 in the folder, 1 now"
                                                "; and 2 more")
    assert settings_diff(old, old) == ""


def test_compare_progress_script_reads_the_work_folder(tiny_folder, tmp_path, capsys):
    """scripts/compare_progress.py tables a kept work folder with the report's own numbers."""
    import importlib.util
    from pathlib import Path

    model, cal = tiny_folder
    out = tmp_path / "r"
    assert main(_argv(model, cal, out, "--metrics", "block_influence,random,last", "--random-seeds", "2",
                      "keep_work=true")) == 0
    rep = json.loads((out / "report.json").read_text())
    path = Path(__file__).resolve().parents[2] / "scripts" / "compare_progress.py"
    spec = importlib.util.spec_from_file_location("compare_progress", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t = mod.rows_of(mod._load(tmp_path / "r.work"))
    assert [r["row"] for r in t["rows"]] == list(rep["rows"])
    for r in t["rows"]:
        want = rep["rows"][r["row"]]
        assert r["removed"] == want["removed"]
        assert r["mean_retention"]["mean_pct"] == want["mean_retention"]["mean_pct"]
        assert r["pruned"] == {k: v["pruned"] for k, v in want["retention"].items()}
    assert mod.main([str(tmp_path / "r.work")]) == 0
    md = capsys.readouterr().out
    assert "| block_influence |" in md and "| random(seed=1) |" in md


def test_bad_work_dir_is_one_line_before_any_work(tiny_folder, tmp_path, capsys):
    """work_dir: a file, --out itself or inside it, inside the model folder: refused at the start."""
    model, cal = tiny_folder
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(f"work_dir={afile}", "is a file"), (f"work_dir={tmp_path / 'r'}", "overlaps --out"),
             (f"work_dir={tmp_path / 'r' / 'inner'}", "overlaps --out"), (f"work_dir={model}", "work_dir")]
    for extra, needle in cases:
        assert main(_argv(model, cal, tmp_path / "r", "--metrics", "last", extra)) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
        assert not (tmp_path / "r").exists()


def test_damaged_work_folder_is_one_line(tiny_folder, tmp_path, capsys):
    model, cal = tiny_folder
    work = tmp_path / "r.work"
    work.mkdir()
    (work / "fingerprint.json").write_text("{not json")
    assert main(_argv(model, cal, tmp_path / "r", "--metrics", "last")) == 2
    err = capsys.readouterr().err.strip()
    assert "is damaged" in err and "--restart" in err and "\n" not in err


def test_compare_progress_on_folders_with_nothing_to_show(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "compare_progress.py"
    spec = importlib.util.spec_from_file_location("compare_progress", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    started = tmp_path / "started.work"
    started.mkdir()
    (started / "fingerprint.json").write_text("{}")
    assert mod.main([str(started)]) == 0 and "no step of the run has finished yet" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        mod.main([str(tmp_path)])
    assert e.value.code == 2 and "is not the work folder" in capsys.readouterr().err
