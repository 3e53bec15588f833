"""The CLI: clear one-line errors on bad input, nothing half-written, and the main job end to end on
the real default model (SmolLM2-135M from PyPI) with small limits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eavss.cli import main


def _err(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("eavss: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_config_prints_every_section(capsys):
    assert main(["config", "prune.fraction=0.3", "eval.limits.squad=5"]) == 0
    out = capsys.readouterr().out
    for key in ("model:", "calibration:", "stats:", "scores:", "prune:", "eval:", "fraction: 0.3", "squad: 5"):
        assert key in out


def test_config_file_and_overrides(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("prune:\n  fraction: 0.4\ncalibration:\n  num_samples: 7\n")
    assert main(["config", "--config", str(f), "calibration.num_samples=9"]) == 0
    out = capsys.readouterr().out
    assert "fraction: 0.4" in out and "num_samples: 9" in out
    # the README's order: COMMAND, then --config FILE, then overrides (flags and overrides intermixed)
    g = tmp_path / "h.yaml"
    g.write_text("heal:\n  steps: 5\n")
    assert main(["config", "compare", "--config", str(g), "heal.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "steps: 5" in out and "lr: 0.5" in out


@pytest.mark.parametrize("argv, needle", [
    (["config", "prune.nope=1"], "unknown config key 'prune.nope'"),
    (["config", "prune.fraction=abc"], "must be a number"),
    (["config", "justaword"], "is not key=value"),
    (["config", "--config", "/nonexistent.yaml"], "does not exist"),
    (["score", "--model", "/no/such/model.gguf", "--out", "OUT"], "does not exist"),
    (["run", "--fraction", "1.5", "--model", "/no/such/dir/", "--out", "OUT"], "fraction must be in (0, 1)"),
    (["run", "--sparsity-mode", "median", "--out", "OUT"], "unknown sparsity threshold mode"),
    (["run", "prune.score=magic", "--out", "OUT"], "prune.score='magic' is not valid"),
    (["prune", "--from", "/no/such/run", "--out", "OUT"], "not found"),
    (["eval", "--tasks", "nosuchtask", "--model", "/no/such/dir/", "--out", "OUT"], "eval.tasks='nosuchtask'"),
    (["eval", "--limit", "0", "--out", "OUT"], "--limit must be >= 1"),
    (["eval", "--seed", "-1", "--tasks", "ppl", "--out", "OUT"], "seed must be >= 0, got -1"),
    (["run", "--tau", "-0.1", "--out", "OUT"], "stats.sparsity.tau must be >= 0, got -0.1"),
    (["eval", "--model", "", "--tasks", "ppl", "--out", "OUT"], "--model (model.name) is empty"),
    (["score", "--calib", "text:", "--out", "OUT"], "calibration path is empty"),
    (["eval", "--suite", "hallucination", "--splits", "/nonexistent", "--out", "OUT"], "/nonexistent not found"),
    (["heal", "--model", "/no/such/dir", "--heal-steps", "2", "heal.warmup_steps=5", "--out", "OUT"],
     "heal.warmup_steps (5) is more than heal.steps (2)"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, needle):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    err = _err(capsys, argv)
    assert needle in err
    assert not (tmp_path / "o").exists()


def test_existing_out_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    err = _err(capsys, ["score", "--out", str(out)])
    assert "--overwrite" in err
    assert (out / "keep.txt").read_text() == "x"


def test_empty_calibration_set(tmp_path, capsys, default_model):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    err = _err(capsys, ["score", "--calib", f"text:{empty}", "--out", str(tmp_path / "o"), "--no-progress"])
    assert "calibration set" in err and "empty" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_run_prune_eval_end_to_end_on_default_model(tmp_path, capsys, default_model):
    out = tmp_path / "run"
    rc = main(["run", "--out", str(out), "--num-samples", "24", "--max-length", "64", "--tasks", "ppl,wikitext2,squad,sst2",
               "--limit", "2", "eval.ppl_max_tokens=512", "eval.ppl_context_length=256", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["schema"] == "eavss.report" and rep["kind"] == "run"
    assert rep["model"]["architecture"] == "llama" and rep["model"]["num_layers"] == 30
    rows = rep["statistics"]["per_layer"]
    assert len(rows) == 30 and all(r["avss"] is not None and r["avss"] > 0 for r in rows)
    assert sorted(r["importance_rank"] for r in rows) == list(range(1, 31))
    pr = rep["pruning"]
    assert len(pr["removed"]) == 7 and pr["num_layers_after"] == 23
    # the removed layers are exactly the 7 lowest by the pruning score (block influence by default)
    assert pr["score"] == "block_influence"
    by = rep["scores"][pr["score"]]["score"]
    lowest = sorted(range(30), key=lambda i: (by[i], i))[:7]
    assert sorted(lowest) == pr["removed"]
    assert pr["removed_paths"] == [f"model.layers.{i}" for i in pr["removed"]]
    ret = rep["evaluation"]["retention"]
    assert set(ret) == {"ppl", "wikitext2", "squad", "sst2"}
    assert rep["evaluation"]["limits"]["squad"] == 2
    for phase in ("load", "statistics", "pruning", "eval_original.ppl", "eval_pruned.sst2"):
        assert rep["timings"][phase] >= 0
    assert (out / "report.md").read_text().count("**removed**") == 7
    assert (out / "avss.png").stat().st_size > 1000
    assert "Retention" in printed

    # the pruned folder is a plain HF model
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(out / "pruned")
    assert m.config.num_hidden_layers == 23 and len(m.model.layers) == 23
    assert m.config.eavss_removed_layers == pr["removed"]

    # prune from the run's scores with another rule, then evaluate the result
    out2 = tmp_path / "pruned_mass"
    assert main(["prune", "--from", str(out), "--rule", "mass", "--mass", "0.2", "--out", str(out2)]) == 0
    pj = json.loads((out2 / "eavss_pruning.json").read_text())
    assert pj["pruning"]["rule"] == "mass" and len(pj["pruning"]["removed"]) >= 1
    out3 = tmp_path / "eval"
    assert main(["eval", "--model", str(out2), "--tasks", "sst2", "--limit", "4", "--out", str(out3), "--no-progress"]) == 0
    ev = json.loads((out3 / "report.json").read_text())
    assert ev["model"]["num_layers"] == 30 - len(pj["pruning"]["removed"])
    assert 0.0 <= ev["evaluation"]["original"]["sst2"]["metrics"]["acc"] <= 1.0


def test_console_script_help():
    exe = Path(sys.executable).with_name("eavss")
    r = subprocess.run([str(exe), "run", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for flag in ("--fraction", "--calib", "--sparsity-mode", "--limit", "--config", "key=value"):
        assert flag in r.stdout


def test_out_must_not_be_or_contain_the_input(tmp_path, capsys):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    err = _err(capsys, ["score", "--model", str(model_dir), "--out", str(model_dir), "--overwrite"])
    assert "is or contains the input" in err
    err = _err(capsys, ["score", "--model", str(model_dir), "--out", str(tmp_path), "--overwrite"])
    assert "is or contains the input" in err
    assert (model_dir / "config.json").exists()


def test_small_floats_in_exponent_form_are_accepted(capsys):
    assert main(["config", "stats.sparsity.epsilon=1e-5", "stats.sparsity.tau=2e-3"]) == 0
    out = capsys.readouterr().out
    assert "epsilon: 1.0e-05" in out and "tau: 0.002" in out


def test_binary_calibration_file_is_a_clear_error(tmp_path):
    from eavss.data.calibration import load_calibration_texts
    from eavss.errors import EavssError

    f = tmp_path / "bin.txt"
    f.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(EavssError, match="not UTF-8 text; convert it, e.g. iconv"):
        load_calibration_texts(f"text:{f}")


# ---------------------------------------------------------------------------------------------
# never lose a user's data or hours (regressions of the fresh-user findings)


@pytest.fixture
def tiny_dir(tmp_path):
    """A tiny llama saved as a HF folder, and a small calibration text file."""
    from eavss.models.surgery import save_model
    from eavss.testing.tiny import TINY_TEXT, tiny_loaded

    lm = tiny_loaded("llama", seed=3)
    save_model(lm.model, lm.tokenizer, tmp_path / "model")
    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(ln for ln in TINY_TEXT.splitlines() if ln.strip()))
    return tmp_path / "model", cal


def _score(model, cal, out, *extra):
    return main(["score", "--model", str(model), "--calib", f"text:{cal}", "--num-samples", "4", "--max-length", "16",
                 "--out", str(out), "--no-progress", *extra])


@pytest.mark.parametrize("name", ["exp #2", "010", "a: b"])
def test_flag_values_are_literal(tmp_path, tiny_dir, name, capsys):
    model, cal = tiny_dir
    assert _score(model, cal, tmp_path / name) == 0
    assert (tmp_path / name / "report.json").is_file()
    assert not (tmp_path / "exp").exists() and not (tmp_path / "8").exists()


def test_prune_never_deletes_what_it_reads(tmp_path, tiny_dir, capsys):
    model, cal = tiny_dir
    run = tmp_path / "run"
    assert _score(model, cal, run) == 0
    for out in (run, tmp_path, model, model / "sub"):
        err = _err(capsys, ["prune", "--from", str(run), "--out", str(out), "--overwrite"])
        assert "input" in err
    assert (run / "report.json").is_file() and (model / "config.json").is_file()
    assert main(["prune", "--from", str(run), "--out", str(run / "pruned"), "--no-progress"]) == 0


def test_prune_checks_the_model_is_the_one_scored(tmp_path, tiny_dir, capsys):
    from eavss.models.surgery import save_model
    from eavss.testing.tiny import tiny_loaded

    model, cal = tiny_dir
    run = tmp_path / "run"
    assert _score(model, cal, run) == 0
    err = _err(capsys, ["prune", "--from", str(run), "--model", "smollm2-135m", "--out", str(tmp_path / "p")])
    assert "is not the model that was scored" in err
    other = tiny_loaded("llama", seed=4)  # same shape, other weights, written over the scored folder
    save_model(other.model, other.tokenizer, model, overwrite=True)
    err = _err(capsys, ["prune", "--from", str(run), "--out", str(tmp_path / "p")])
    assert "changed since it was scored" in err and "sha256" in err
    assert not (tmp_path / "p").exists()


def test_lengths_longer_than_the_context_are_refused(tmp_path, capsys):
    from eavss.models.surgery import save_model
    from eavss.testing.tiny import TINY_TEXT, tiny_loaded

    lm = tiny_loaded("gpt2", seed=0, n_positions=32)
    save_model(lm.model, lm.tokenizer, tmp_path / "gpt2")
    cal = tmp_path / "cal.txt"
    cal.write_text(TINY_TEXT)
    err = _err(capsys, ["score", "--model", str(tmp_path / "gpt2"), "--calib", f"text:{cal}", "--max-length", "64",
                        "--out", str(tmp_path / "o"), "--no-progress"])
    assert "calibration.max_length=64 is longer than the model's context of 32 tokens" in err
    assert not (tmp_path / "o").exists()


def test_run_checks_everything_before_the_slow_work(tmp_path, tiny_dir, capsys, monkeypatch):
    from eavss.recipes import avss

    def _never(*a, **k):
        raise AssertionError("slow work started before the checks")

    model, cal = tiny_dir
    monkeypatch.setattr(avss, "collect", _never)
    err = _err(capsys, ["run", "--model", str(model), "--calib", f"text:{cal}", "--protect-first", "3",
                        "--protect-last", "1", "--out", str(tmp_path / "o"), "--no-progress", "eval.ppl_context_length=128"])
    assert "protect" in err
    empty = tmp_path / "nodata"
    empty.mkdir()
    monkeypatch.setattr(avss, "load", _never)
    err = _err(capsys, ["run", "--model", str(model), "--calib", f"text:{cal}", "--data-dir", str(empty),
                        "--out", str(tmp_path / "o"), "--no-progress"])
    assert "is missing" in err and "--data-dir" in err
    assert not (tmp_path / "o").exists()


def test_a_model_that_needs_custom_code_says_how_to_opt_in(tmp_path, capsys):
    import json as _json

    d = tmp_path / "custom"
    d.mkdir()
    (d / "config.json").write_text(_json.dumps({"model_type": "eavss_custom_arch",
                                                "auto_map": {"AutoConfig": "conf.C", "AutoModelForCausalLM": "mod.M"}}))
    err = _err(capsys, ["score", "--model", str(d), "--out", str(tmp_path / "o")])
    assert "model.trust_remote_code=true" in err and "runs Python code" in err


def test_every_input_file_is_protected_from_overwrite(tmp_path, tiny_dir, capsys):
    """The calibration text, the --config file and a built-in alias's package folder are inputs too;
    and --overwrite replaces only folders eavss wrote."""
    model, cal = tiny_dir
    d = tmp_path / "cal_dir"
    d.mkdir()
    (d / "c.txt").write_text(cal.read_text())
    err = _err(capsys, ["score", "--model", str(model), "--calib", f"text:{d / 'c.txt'}", "--out", str(d), "--overwrite"])
    assert "is or contains the input" in err and (d / "c.txt").exists()
    cfgd = tmp_path / "cfg_dir"
    cfgd.mkdir()
    (cfgd / "x.yaml").write_text("seed: 1\n")
    err = _err(capsys, ["score", "--config", str(cfgd / "x.yaml"), "--model", str(model), "--out", str(cfgd),
                        "--overwrite"])
    assert "is or contains the input" in err and (cfgd / "x.yaml").exists()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    err = _err(capsys, ["score", "--model", str(model), "--calib", f"text:{cal}", "--out", str(precious), "--overwrite"])
    assert "eavss did not write" in err and (precious / "thesis.txt").exists()

    from eavss.models.loading import ALIASES

    pkg = Path(ALIASES["smollm2-135m"].locate()[0]).parent
    err = _err(capsys, ["score", "--out", str(pkg), "--overwrite"])
    assert "is or contains the input" in err and any(pkg.glob("*.gguf"))


def test_yaml_text_values_stay_text_and_the_mass_rule_runs(tmp_path, tiny_dir, capsys):
    model, cal = tiny_dir
    f = tmp_path / "c.yaml"
    f.write_text(f"out: 0123\nseed: 7\nmodel:\n  name: {model}\ncalibration:\n  dataset: text:{cal}\n"
                 "  num_samples: 4\n  max_length: 16\n")
    assert main(["config", "score", "--config", str(f)]) == 0
    out = capsys.readouterr().out
    assert "out: '0123'" in out and "seed: 7" in out
    run = tmp_path / "run"
    assert _score(model, cal, run) == 0
    assert main(["prune", "--from", str(run), "--rule", "mass", "--mass", "0.3", "--score", "avss",
                 "--out", str(tmp_path / "pm"), "--no-progress"]) == 0


def test_limit_applies_to_the_suite_tasks(capsys):
    """--suite replaces eval.tasks; --limit N then caps every task of the suite."""
    from eavss.cli import _command_parser, resolve
    from eavss.recipes import RECIPES

    args = _command_parser(RECIPES["eval"]).parse_intermixed_args(["--suite", "hallucination", "--limit", "7"])
    cfg = resolve(RECIPES["eval"], args)
    assert cfg.eval.tasks and all(cfg.eval.limits[t] == 7 for t in cfg.eval.tasks)


# ---------------------------------------------------------------------------------------------
# Ctrl-C: one line and exit 130, from the very start


INTERRUPTED = "eavss: interrupted; --out was not written\n"


@pytest.mark.parametrize("where, argv", [
    ("_run_command", ["score", "--out", "OUT"]),  # a command: torch is imported lazily in there
    ("build_parser", []),
    ("_config_parser", ["config"]),
    ("_command_parser", ["score", "--out", "OUT"]),
])
def test_ctrl_c_while_dispatching_is_one_line(tmp_path, capsys, monkeypatch, where, argv):
    import eavss.cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(eavss.cli, where, interrupted)
    assert main([str(tmp_path / "o") if a == "OUT" else a for a in argv]) == 130
    assert capsys.readouterr().err == INTERRUPTED
    assert not (tmp_path / "o").exists()


def test_out_of_device_memory_is_one_line_with_the_fix(tmp_path, capsys, monkeypatch):
    import torch

    import eavss.cli

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 11.66 GiB. GPU 0 has a total "
                                     "capacity of 139.80 GiB of which 8.28 GiB is free. Process 1 has 52 GiB")

    monkeypatch.setattr(eavss.cli, "_run_command", oom)
    assert main(["score", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("eavss: error: the device ran out of memory")
    assert "Tried to allocate 11.66 GiB" in err and "eval.batch_size" in err and "Process 1" not in err
    assert not (tmp_path / "o").exists()


def test_other_errors_are_not_swallowed(monkeypatch):
    import eavss.cli

    def boom(*a, **k):
        raise ValueError("a bug")

    monkeypatch.setattr(eavss.cli, "_run_command", boom)
    with pytest.raises(ValueError, match="a bug"):
        main(["score", "--out", "x"])


class _CtrlCInTorchImport:
    """A meta-path finder that raises KeyboardInterrupt whenever ``torch`` is imported afresh: Ctrl-C
    pressed while torch is still importing."""

    def __init__(self):
        self.attempts = 0

    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            self.attempts += 1
            raise KeyboardInterrupt
        return None


def test_ctrl_c_while_torch_imports_is_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the lazy `import torch` printed the line, then the cleanup imported
    eavss.distributed and so torch again: a traceback ("partially initialized module 'torch'") or a
    crash. The cleanup now touches only modules already imported."""
    import eavss
    from eavss.recipes import RECIPES

    RECIPES["score"].config_class()  # the command's modules are imported before Ctrl-C "arrives"
    finder = _CtrlCInTorchImport()
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "eavss.distributed", raising=False)
    monkeypatch.delattr(eavss, "distributed", raising=False)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    try:
        rc = main(["score", "--out", str(tmp_path / "o"), "--threads", "1"])
    except KeyboardInterrupt:  # keep pytest running: a KeyboardInterrupt would end the session
        pytest.fail("KeyboardInterrupt escaped main (torch imported again in the cleanup)")
    assert rc == 130 and capsys.readouterr().err == INTERRUPTED
    assert finder.attempts == 1  # torch's import was cut short once and not started again
    assert not (tmp_path / "o").exists()
