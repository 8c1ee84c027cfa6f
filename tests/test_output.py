"""Renderers: each format's exact shape."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from medimg_cli.output import element_text, render_records
from medimg_cli.query import lookup_key

RECORDS: list[dict[str, Any]] = [
    {
        "00080020": {"vr": "DA", "Value": ["20240115"]},
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
        "00100020": {"vr": "LO", "Value": ["P,1"]},
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
    },
    {"0020000D": {"vr": "UI", "Value": ["1.2.4"]}, "00100010": {"vr": "PN"}},
]


def render(fmt: str, records: list[dict[str, Any]] = RECORDS, **kw: Any) -> tuple[int, str]:
    out = io.StringIO()
    count = render_records(iter(records), fmt, out, level="study", **kw)
    return count, out.getvalue()


def test_element_text() -> None:
    assert element_text(RECORDS[0]["00100010"]) == "Müller^Jürgen"
    assert element_text(RECORDS[0]["00080061"]) == "CT\\MR"
    assert element_text(RECORDS[1]["00100010"]) == ""
    assert element_text(None) == ""


def test_jsonl_is_one_dicom_json_object_per_line_unicode_kept() -> None:
    count, text = render("jsonl")
    lines = text.splitlines()
    assert count == 2 and len(lines) == 2
    assert json.loads(lines[0]) == RECORDS[0]
    assert "Müller" in lines[0]


def test_json_is_one_array_also_when_empty() -> None:
    assert json.loads(render("json")[1]) == RECORDS
    assert json.loads(render("json", [])[1]) == []


def test_csv_has_keyword_header_and_quotes() -> None:
    count, text = render("csv", extra_keys=[lookup_key("InstitutionName")])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][0] == "PatientName" and rows[0][-1] == "InstitutionName"
    assert rows[1][:4] == ["Müller^Jürgen", "P,1", "20240115", "CT\\MR"]
    assert count == 2 and len(rows) == 3


def test_uids_and_table() -> None:
    assert render("uids")[1] == "1.2.3\n1.2.4\n"
    count, text = render("table")
    assert count == 2
    assert "Müller^Jürgen" in text and "2024-01-15" in text and "Study UID" in text
    assert "\x1b[" not in text  # no colour when not asked
