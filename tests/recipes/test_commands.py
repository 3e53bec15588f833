"""Every registered command: --help and `eavss config COMMAND` work, built from the registry."""

from __future__ import annotations

import dataclasses

import pytest

from eavss.cli import main
from eavss.config import iter_fields
from eavss.recipes import RECIPES


@pytest.mark.parametrize("name", RECIPES.names())
def test_help_lists_every_declared_flag(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    flags = [f.metadata["flag"] for _, f, _ in iter_fields(RECIPES[name].config_class()) if f.metadata.get("flag")]
    assert flags and all(flag in out for flag in flags), [f for f in flags if f not in out]
    assert "key=value" in out and "--config" in out


@pytest.mark.parametrize("name", RECIPES.names())
def test_config_command_prints_every_key(name, capsys):
    assert main(["config", name]) == 0
    out = capsys.readouterr().out
    cls = RECIPES[name].config_class()
    for key, _, _ in iter_fields(cls):
        assert f"{key.split('.')[-1]}:" in out, key
    assert dataclasses.is_dataclass(cls)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES.names()) and "config" in out


def test_flags_after_overrides_are_accepted(capsys):
    assert main(["config", "run", "prune.fraction=0.3"]) == 0
    # a command's flags and overrides may come in any order (run would start work; --help stops first)
    with pytest.raises(SystemExit) as e:
        main(["run", "prune.fraction=0.3", "--fraction", "0.2", "--help"])
    assert e.value.code == 0


def test_a_recipe_without_torchrun_support_refuses_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not RECIPES.entry("eval").meta["torchrun"]
    assert main(["eval", "--out", str(tmp_path / "o")]) == 2
    assert "does not run under torchrun" in capsys.readouterr().err
