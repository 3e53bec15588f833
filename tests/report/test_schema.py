"""The report schema: header fields, read_report's one-line errors for a wrong kind or version."""

from __future__ import annotations

import json

import pytest

from eavss.errors import EavssError
from eavss.report.schema import SCHEMA_VERSION, new_report, read_report, tokenizer_info


def test_header_records_code_and_tokenizer(tiny):
    lm = tiny("llama")
    r = new_report("score", {"a": 1}, 3, lm.tokenizer)
    assert r["schema_version"] == SCHEMA_VERSION and r["seed"] == 3 and r["config"] == {"a": 1}
    assert set(r["code"]) == {"eavss", "git_commit", "dirty"}
    assert r["tokenizer"] == tokenizer_info(lm.tokenizer)
    assert r["tokenizer"]["pad_token_id"] == lm.tokenizer.pad_token_id and "eos_token" in r["tokenizer"]


@pytest.mark.parametrize("content, needle", [
    (None, "not found"), ("{not json", "not valid JSON"), ({"x": 1}, "not an eavss report"),
    ({"schema": "eavss.report", "schema_version": "1.0", "kind": "score"}, "incompatible"),
    ({"schema": "eavss.report", "schema_version": SCHEMA_VERSION, "kind": "eval"}, "is a 'eval' report"),
])
def test_read_report_errors(tmp_path, content, needle):
    if content is not None:
        (tmp_path / "report.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(EavssError) as e:
        read_report(tmp_path, kinds=("score", "run"))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_read_report_accepts_the_right_kind(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(new_report("run", {}, 0)))
    assert read_report(tmp_path / "report.json", kinds=("score", "run"))["kind"] == "run"
