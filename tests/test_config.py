"""The one config loader: typed overrides, literal flag values, declared choices/bounds/keys,
example configs, and the commented dump that --config loads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from eavss.config import dump_config, load_config, parse_text
from eavss.errors import EavssError
from eavss.recipes import RECIPES
from eavss.recipes.avss import PruneConfig, RunConfig
from eavss.recipes.hallucination import HallucinationConfig

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "eavss" / "configs"


def test_string_keys_stay_literal_and_numbers_are_parsed():
    cfg = load_config(RunConfig, None, ["out=010", "model.name=a: b #c", "prune.fraction=0.3", "seed=7",
                                        "eval.tasks=ppl,squad", "threads=null", "eval.limits.squad=5"])
    assert cfg.out == "010" and cfg.model.name == "a: b #c"
    assert cfg.prune.fraction == 0.3 and cfg.seed == 7 and cfg.threads is None
    assert cfg.eval.tasks == ["ppl", "squad"] and cfg.eval.limits["squad"] == 5 and cfg.eval.limits["sst2"] == 200


def test_typed_values_win_over_overrides():
    cfg = load_config(RunConfig, None, ["out=a"], {"out": "runs/exp #2", "prune.fraction": 0.4})
    assert cfg.out == "runs/exp #2" and cfg.prune.fraction == 0.4


@pytest.mark.parametrize("override, needle", [
    ("prune.fraction=abc", "must be a number"), ("seed=1.5", "must be an integer"), ("seed=-1", "seed"),
    ("stats.block_influence=maybe", "must be true or false"), ("prune.nope=1", "unknown config key 'prune.nope'"),
    ("prune=3", "is a section"), ("stats.site=resid_pre", "stats.site='resid_pre' is not valid"),
    ("stats.variance=pooledd", "stats.variance='pooledd' is not valid"), ("prune.score=avs", "prune.score='avs'"),
    ("eval.tasks=[ppl, nosuch]", "eval.tasks='nosuch'"), ("eval.limits.sqaud=5", "unknown key eval.limits.sqaud"),
    ("eval.limits.squad=0", "eval.limits.squad must be >= 1"), ("calibration.num_samples=0", "calibration.num_samples must be >= 1"),
    ("prune.fraction=1.0", "fraction must be in (0, 1)"), ("threads=0", "threads must be >= 1"),
    ("calibration.dataset=wikitext3", "calibration.dataset='wikitext3'"), ("model.dtype=float8", "model.dtype"),
])
def test_typos_fail_at_validation(override, needle):
    with pytest.raises(EavssError) as e:
        load_config(RunConfig, None, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, needle", [
    ("scores.combine=maxx", "scores.combine='maxx' is not valid"), ("scores.pooling=strat", "scores.pooling='strat'"),
    ("scores.hsav=log", "scores.hsav='log'"), ("judge.match=fuzzy", "judge.match='fuzzy'"),
    ("limits.nq_opne=5", "unknown key limits.nq_opne"), ("sources=[nq_open, nq_open]", "listed twice"),
])
def test_hallucination_typos_fail_at_validation(override, needle):
    with pytest.raises(EavssError, match=None) as e:
        load_config(HallucinationConfig, None, [override])
    assert needle in str(e.value)


def test_parse_text_by_declared_type():
    assert parse_text("010", str, "k") == "010"
    assert parse_text("1e-5", float, "k") == 1e-5
    assert parse_text("[a, b]", list[str], "k") == ["a", "b"]
    assert parse_text("none", int | None, "k") is None
    with pytest.raises(EavssError, match="integer"):
        parse_text("ten", int, "k")


@pytest.mark.parametrize("name", sorted(RECIPES.names()))
def test_dump_loads_back_to_the_same_config(tmp_path, name):
    cls = RECIPES[name].config_class()
    cfg = load_config(cls, check=False)
    f = tmp_path / "c.yaml"
    f.write_text(dump_config(cfg))
    assert load_config(cls, str(f), check=False) == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load_and_say_how_to_run(path):
    text = path.read_text()
    run_line = next(line for line in text.splitlines() if line.startswith("# Run:"))
    command = run_line.split()[3]
    assert f"--config src/eavss/configs/{path.name}" in run_line
    cfg = load_config(RECIPES[command].config_class(), str(path), ["source=x"] if command == "prune" else [])
    assert cfg is not None


def test_prune_config_has_no_evaluation_section():
    assert not hasattr(PruneConfig(), "eval") and PruneConfig().model.name is None
