"""Calibration (and healing) texts from local files: ``jsonl:PATH:FIELD`` sources."""

from __future__ import annotations

import json

import pytest

from eavss.data.calibration import load_calibration_texts
from eavss.errors import EavssError


def _jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_jsonl_field_missing_from_every_record_is_named(tmp_path):
    """A FIELD that no record has used to be reported as an empty set; the message now names the
    field, the file and the fields the first record has."""
    f = tmp_path / "c.jsonl"
    _jsonl(f, [{"text": "one two three", "id": 1}, {"text": "four five", "id": 2}])
    with pytest.raises(EavssError) as e:
        load_calibration_texts(f"jsonl:{f}:body")
    assert str(e.value) == (f"field 'body' is missing from {f} (no record has it; the first record has fields "
                            f"['text', 'id']); pass jsonl:{f}:FIELD with one of those")


def test_jsonl_field_in_some_records_reads_those(tmp_path):
    f = tmp_path / "c.jsonl"
    _jsonl(f, [{"id": 1}, {"id": 2, "body": "  some text  "}, {"body": ""}])
    assert load_calibration_texts(f"jsonl:{f}:body") == ["some text"]


def test_jsonl_field_present_but_empty_is_still_the_empty_set(tmp_path):
    f = tmp_path / "c.jsonl"
    _jsonl(f, [{"body": ""}, {"body": "   "}, {"body": 3}])
    with pytest.raises(EavssError, match=r"calibration set 'jsonl:.*:body' is empty \(no usable text\)"):
        load_calibration_texts(f"jsonl:{f}:body")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n", encoding="utf-8")
    with pytest.raises(EavssError, match="is empty"):  # no record at all: nothing to name
        load_calibration_texts(f"jsonl:{blank}:body")


def test_missing_text_file_names_the_key_to_fix(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(EavssError, match=r"does not exist; pass calibration\.dataset=text:"):
        load_calibration_texts(f"text:{missing}")
    with pytest.raises(EavssError, match=r"does not exist; pass heal\.dataset=text:"):
        load_calibration_texts(f"text:{missing}", key="heal.dataset")
    with pytest.raises(EavssError, match=r"is a folder; pass heal\.dataset=text:"):
        load_calibration_texts(f"text:{tmp_path}", key="heal.dataset")
