"""The query model: filters to C-FIND identifiers, dates, keys, hierarchy."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medimg_cli.errors import UsageError
from medimg_cli.query import build_query, lookup_key, parse_date, parse_key_option, uid_line

TODAY = dt.date(2026, 3, 10)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20240131", "20240131"),
        ("2024-01-31", "20240131"),
        ("20240101-20240131", "20240101-20240131"),
        ("2024-01-01-2024-01-31", "20240101-20240131"),
        ("20240101-", "20240101-"),
        ("-20240131", "-20240131"),
        ("today", "20260310"),
        ("Yesterday", "20260309"),
        ("1d", "20260310-20260310"),
        ("7d", "20260304-20260310"),
    ],
)
def test_dates_become_dicom_ranges(text: str, expected: str) -> None:
    assert parse_date(text, today=TODAY) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("2024-13-01", "2024-13-01 is not a valid calendar date"),
        ("20240230", "20240230 is not a valid calendar date"),
        ("last week", "'last week' is not a date"),
        ("20240131-20240101", "the range ends before it starts"),
        ("0d", "at least 1"),
        ("-", "is not a date"),
    ],
)
def test_bad_dates_are_usage_errors_naming_the_value(text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_date(text, today=TODAY)
    assert fragment in info.value.message
    assert info.value.exit_code == 2


@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2999, 12, 31)))
def test_any_calendar_date_round_trips_in_both_spellings(day: dt.date) -> None:
    assert parse_date(day.isoformat()) == day.strftime("%Y%m%d")
    assert parse_date(day.strftime("%Y%m%d")) == day.strftime("%Y%m%d")


def test_keys_by_keyword_or_tag() -> None:
    assert lookup_key("PatientName").tag == 0x00100010
    assert lookup_key("0010,0020").keyword == "PatientID"
    assert lookup_key("(0008,0050)").keyword == "AccessionNumber"
    assert lookup_key("00080060").vr == "CS"
    key, value = parse_key_option("StudyDate=2024-01-01-")
    assert (key.keyword, value) == ("StudyDate", "20240101-")
    key, value = parse_key_option("InstitutionName=")
    assert (key.keyword, value) == ("InstitutionName", "")


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        ("PatientNmae=X", "unknown DICOM keyword 'PatientNmae'"),
        ("QueryRetrieveLevel=SERIES", "medimg sets QueryRetrieveLevel itself"),
        ("=x", "expected KEY=VALUE"),
        ("ReferencedStudySequence=", "sequence attributes"),
        ("StudyDate=yesterdayish", "is not a date"),
    ],
)
def test_bad_keys_are_usage_errors(option: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_key_option(option)


def test_bad_level_root_limit_and_uid_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="--level 'image'"):
        build_query(level="image")
    with pytest.raises(UsageError, match="needs the Patient Root model"):
        build_query(level="patient")
    with pytest.raises(UsageError, match="--limit 0"):
        build_query(limit=0)
    with pytest.raises(UsageError, match=r"'1\.2\.x' is not a DICOM UID"):
        build_query(study_uid="1.2.x")
    with pytest.raises(UsageError, match="--modality"):
        build_query(modality="C T")


def identifier(query_level: str = "study", **kw: object) -> dict[str, str]:
    query = build_query(level=query_level, today=TODAY, **kw)  # type: ignore[arg-type]
    step = query.step(query.level)
    return {key.keyword: value for key, value in step.keys}


def test_study_query_carries_filters_and_return_keys() -> None:
    keys = identifier(name="DOE^*", date="7d", modality="ct,mr", accession="A1",
                      description="CHEST*")
    assert keys["PatientName"] == "DOE^*"
    assert keys["StudyDate"] == "20260304-20260310"
    assert keys["ModalitiesInStudy"] == "CT\\MR"
    assert keys["AccessionNumber"] == "A1"
    assert keys["StudyDescription"] == "CHEST*"
    assert keys["StudyInstanceUID"] == ""
    assert keys["NumberOfStudyRelatedInstances"] == ""


def test_series_query_maps_modality_and_description_to_series_keys() -> None:
    query = build_query(level="series", study_uid="1.2.3", modality="CT", description="AX*")
    assert not query.needs_walk()
    keys = {k.keyword: v for k, v in query.step("series", {"StudyInstanceUID": "1.2.3"}).keys}
    assert keys["Modality"] == "CT" and keys["SeriesDescription"] == "AX*"
    assert keys["StudyInstanceUID"] == "1.2.3"
    assert "ModalitiesInStudy" not in keys


def test_hierarchy_walk_needed_when_upper_keys_are_missing_or_not_unique() -> None:
    assert build_query(level="series").needs_walk()
    assert build_query(level="series", name="DOE*").needs_walk()
    assert build_query(level="series", study_uid="1.2.3,1.2.4").needs_walk()
    assert build_query(level="series", study_uid="1.2.3", date="20240101").needs_walk()
    assert not build_query(level="instance", study_uid="1.2", series_uid="1.2.3").needs_walk()
    assert build_query(level="instance", study_uid="1.2").needs_walk()
    assert not build_query(level="study").needs_walk()
    patient_root = build_query(level="study", root="patient", patient_id="PAT-001")
    assert not patient_root.needs_walk()


def test_walk_puts_patient_filters_on_the_study_step() -> None:
    query = build_query(level="series", name="DOE*", modality="CT")
    study = {k.keyword: v for k, v in query.step("study").keys}
    series = {k.keyword: v for k, v in query.step("series", {"StudyInstanceUID": "9.9"}).keys}
    assert study["PatientName"] == "DOE*" and "Modality" not in study
    assert series["Modality"] == "CT" and series["StudyInstanceUID"] == "9.9"
    assert "PatientName" not in series


def test_uid_lines_join_upper_keys() -> None:
    record = {
        "0020000D": {"vr": "UI", "Value": ["1.2"]},
        "0020000E": {"vr": "UI", "Value": ["1.2.3"]},
        "00080018": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
    }
    assert uid_line(record, "study") == "1.2"
    assert uid_line(record, "series") == "1.2/1.2.3"
    assert uid_line(record, "instance") == "1.2/1.2.3/1.2.3.4"
    assert uid_line(record, "patient") == "P1"
