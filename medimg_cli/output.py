"""Renderers: DICOM JSON records to table, json, jsonl, csv or uids.

Every renderer except `table` writes each record as it arrives, so the
output of a query with 100,000 matches is never held in memory. The table
is for people and is printed once complete.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from medimg_cli.query import Key, lookup_key, uid_line

FORMATS = ("table", "json", "jsonl", "csv", "uids")

# Table/CSV columns per level: (header, keyword).
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "patient": (
        ("Patient", "PatientName"),
        ("Patient ID", "PatientID"),
        ("Birth date", "PatientBirthDate"),
        ("Sex", "PatientSex"),
        ("Studies", "NumberOfPatientRelatedStudies"),
    ),
    "study": (
        ("Patient", "PatientName"),
        ("Patient ID", "PatientID"),
        ("Date", "StudyDate"),
        ("Modalities", "ModalitiesInStudy"),
        ("Description", "StudyDescription"),
        ("Accession", "AccessionNumber"),
        ("Series", "NumberOfStudyRelatedSeries"),
        ("Images", "NumberOfStudyRelatedInstances"),
        ("Study UID", "StudyInstanceUID"),
    ),
    "series": (
        ("Modality", "Modality"),
        ("Number", "SeriesNumber"),
        ("Description", "SeriesDescription"),
        ("Images", "NumberOfSeriesRelatedInstances"),
        ("Study UID", "StudyInstanceUID"),
        ("Series UID", "SeriesInstanceUID"),
    ),
    "instance": (
        ("Number", "InstanceNumber"),
        ("SOP Class", "SOPClassUID"),
        ("Study UID", "StudyInstanceUID"),
        ("Series UID", "SeriesInstanceUID"),
        ("SOP Instance UID", "SOPInstanceUID"),
    ),
}


def element_text(element: Any) -> str:
    """One DICOM JSON element as plain text (PN as its alphabetic form, `\\` between values)."""
    if not isinstance(element, dict):
        return ""
    parts: list[str] = []
    for value in element.get("Value", []):
        if isinstance(value, dict):
            if element.get("vr") == "PN":
                parts.append(
                    str(value.get("Alphabetic") or value.get("Ideographic")
                        or value.get("Phonetic") or "")
                )
            else:
                parts.append(f"({len(value)} attributes)")
        elif value is None:
            parts.append("")
        else:
            parts.append(str(value))
    return "\\".join(parts)


def columns_for(level: str, extra: Sequence[Key]) -> list[tuple[str, Key]]:
    """The table/CSV columns: the level's own, then any -k keys not among them."""
    cols = [(header, lookup_key(keyword)) for header, keyword in COLUMNS[level]]
    shown = {key.tag for _, key in cols}
    for key in extra:
        if key.tag not in shown:
            cols.append((key.keyword, key))
            shown.add(key.tag)
    return cols


def _pretty_date(text: str) -> str:
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def render_records(
    records: Iterable[dict[str, Any]],
    fmt: str,
    out: TextIO,
    *,
    level: str,
    extra_keys: Sequence[Key] = (),
    color: bool = False,
) -> int:
    """Write `records` to `out` in `fmt`; return how many were written."""
    if fmt == "jsonl":
        return _jsonl(records, out)
    if fmt == "json":
        return _json_array(records, out)
    if fmt == "uids":
        count = 0
        for record in records:
            out.write(uid_line(record, level) + "\n")
            count += 1
        return count
    cols = columns_for(level, extra_keys)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([key.keyword for _, key in cols])
        count = 0
        for record in records:
            writer.writerow([element_text(record.get(key.hex)) for _, key in cols])
            count += 1
        return count
    if fmt == "table":
        return _table(records, out, cols, color=color)
    raise ValueError(f"unknown format {fmt}")


def _jsonl(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    count = 0
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count


def _json_array(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    count = 0
    out.write("[")
    for record in records:
        out.write(",\n" if count else "\n")
        out.write(json.dumps(record, ensure_ascii=False, indent=None, separators=(",", ":")))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def _table(
    records: Iterable[dict[str, Any]],
    out: TextIO,
    cols: Sequence[tuple[str, Key]],
    *,
    color: bool,
) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for header, key in cols:
        uid = key.vr == "UI"
        table.add_column(header, overflow="fold" if uid else "ellipsis", no_wrap=not uid)
    count = 0
    for record in records:
        row = []
        for _, key in cols:
            text = element_text(record.get(key.hex))
            row.append(_pretty_date(text) if key.vr == "DA" else text)
        table.add_row(*row)
        count += 1
    # On a terminal the table fits its width; written to a file it is never cut.
    terminal = hasattr(out, "isatty") and out.isatty()
    console = Console(file=out, force_terminal=color, no_color=not color, highlight=False,
                      soft_wrap=False, width=None if terminal else 4096)
    console.print(table)
    return count


def write_json(data: Any, out: TextIO) -> None:
    """One JSON document (indented) for commands whose result is a single object."""
    out.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
