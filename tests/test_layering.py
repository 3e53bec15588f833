"""No module imports from a layer above it.

Layers, bottom to top: the library (stats, scores, prune, models, data, evaluation, hallucination,
training, registry, errors, io, distributed, testing) < report < config < recipes < cli. Checked
on every ``import`` statement, including the ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "eavss"
LAYER = {"report": 1, "config": 2, "recipes": 3, "cli": 4}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYER.get(parts[1], 0) if len(parts) > 1 and parts[0] == "eavss" else -1


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_upward_import(path):
    rel = path.relative_to(SRC.parent).with_suffix("")
    module = ".".join(rel.parts).removesuffix(".__init__")
    here = _layer(module)
    bad = [(m, line) for m, line in _imports(path) if _layer(m) > here]
    assert not bad, f"{module} (layer {here}) imports from a layer above: {bad}"


def test_hallucination_package_holds_no_command_code():
    names = {p.stem for p in (SRC / "hallucination").glob("*.py")}
    assert not names & {"cli", "config", "recipe", "report"}, names
