"""`medimg find` over DIMSE against Orthanc and DCMTK dcmqrscp: the same tests for both."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from cli_helpers import Result, medimg, value, write_config
from dicom_data import Manifest
from peers import Peer

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
PATIENT_NAME, PATIENT_ID, STUDY_DATE = "00100010", "00100020", "00080020"


@pytest.fixture
def config(tmp_path: Path, pacs: Peer) -> Path:
    return write_config(tmp_path / "c.toml", pacs.profile_toml("pacs"))


def find(config: Path, *args: str) -> Result:
    result = medimg("find", "pacs", *args, config=config)
    assert result.code == 0, result.stderr
    return result


def study_uids(result: Result) -> set[str]:
    return {value(r, STUDY_UID) for r in result.jsonl()}


def test_all_studies_piped_as_jsonl(config: Path, dicom_data: Manifest) -> None:
    result = find(config)
    records = result.jsonl()
    assert len(records) == len(dicom_data.studies)
    assert study_uids(result) == {s.study_uid for s in dicom_data.studies}
    for record in records:
        study = dicom_data.study(value(record, STUDY_UID))
        patient = dicom_data.patient(study.patient_id)
        assert value(record, PATIENT_ID) == patient.patient_id
        assert value(record, PATIENT_NAME) == patient.name
        assert value(record, STUDY_DATE) == study.study_date
        assert "00080005" not in record and "00080052" not in record


def test_name_wildcard_and_patient_id(config: Path, dicom_data: Manifest) -> None:
    doe = {s.study_uid for s in dicom_data.studies if s.patient_id in ("PAT001", "PAT002")}
    assert study_uids(find(config, "--name", "DOE*")) == doe
    assert study_uids(find(config, "--name", "DOE^JA?E")) == {
        s.study_uid for s in dicom_data.studies_of("PAT002")}
    assert study_uids(find(config, "--patient-id", "PAT003")) == {
        s.study_uid for s in dicom_data.studies_of("PAT003")}


@pytest.mark.parametrize(
    ("date", "low", "high"),
    [
        ("20240131", "20240131", "20240131"),
        ("20240101-20240131", "20240101", "20240131"),
        ("2024-06-01-", "20240601", "99999999"),
        ("-20240201", "00000000", "20240201"),
    ],
)
def test_date_ranges(config: Path, dicom_data: Manifest, date: str, low: str, high: str) -> None:
    expected = {s.study_uid for s in dicom_data.studies if low <= s.study_date <= high}
    assert expected
    assert study_uids(find(config, "--date", date)) == expected


def test_modality_and_accession(config: Path, dicom_data: Manifest) -> None:
    mr = {s.study_uid for s in dicom_data.studies if "MR" in s.modalities}
    assert study_uids(find(config, "--modality", "MR")) == mr
    study = dicom_data.studies[3]
    assert study_uids(find(config, "--accession", study.accession_number)) == {study.study_uid}


def test_non_ascii_names_in_every_format(config: Path, dicom_data: Manifest) -> None:
    latin1 = dicom_data.patient("PAT004")
    utf8 = dicom_data.patient("PAT005")
    for patient in (latin1, utf8):
        records = find(config, "--patient-id", patient.patient_id).jsonl()
        assert records and all(value(r, PATIENT_NAME) == patient.name for r in records)
    for patient, pattern in ((latin1, "Müller*"), (utf8, "山田*")):
        records = find(config, "--name", pattern).jsonl()
        assert {value(r, PATIENT_ID) for r in records} == {patient.patient_id}
    for fmt in ("json", "csv", "table"):
        out = find(config, "--patient-id", latin1.patient_id, "--format", fmt).stdout
        assert latin1.name in out, fmt
        out = find(config, "--patient-id", utf8.patient_id, "--format", fmt).stdout
        assert utf8.name in out, fmt


def test_study_level_formats(config: Path, dicom_data: Manifest) -> None:
    as_json = json.loads(find(config, "--format", "json").stdout)
    assert {value(r, STUDY_UID) for r in as_json} == {s.study_uid for s in dicom_data.studies}
    rows = list(csv.DictReader(io.StringIO(find(config, "--format", "csv").stdout)))
    assert {r["StudyInstanceUID"] for r in rows} == {s.study_uid for s in dicom_data.studies}
    assert {r["PatientName"] for r in rows} == {p.name for p in dicom_data.patients}
    uids = find(config, "--format", "uids").stdout.splitlines()
    assert sorted(uids) == sorted(s.study_uid for s in dicom_data.studies)
    table = find(config, "--format", "table").stdout
    assert "Study UID" in table and "DOE^JANE" in table and "2024-01-31" in table


def test_series_level_with_study_uid(config: Path, dicom_data: Manifest) -> None:
    study = next(s for s in dicom_data.studies if len(dicom_data.series_of(s.study_uid)) > 1)
    result = find(config, "--level", "series", "--study-uid", study.study_uid,
                  "--format", "uids")
    assert sorted(result.stdout.splitlines()) == sorted(
        f"{study.study_uid}/{se.series_uid}" for se in dicom_data.series_of(study.study_uid))


def test_series_level_without_study_uid_walks_the_hierarchy(
    config: Path, dicom_data: Manifest
) -> None:
    result = find(config, "--level", "series", "--modality", "CT", "--name", "DOE*")
    expected = {
        se.series_uid
        for se in dicom_data.series
        if se.modality == "CT"
        and dicom_data.study(se.study_uid).patient_id in ("PAT001", "PAT002")
    }
    records = result.jsonl()
    assert expected and {value(r, SERIES_UID) for r in records} == expected
    for record in records:
        series = next(se for se in dicom_data.series if se.series_uid == value(record, SERIES_UID))
        assert value(record, STUDY_UID) == series.study_uid
        assert value(record, "00080060") == "CT"


def test_instance_level_uid_lines(config: Path, dicom_data: Manifest) -> None:
    series = dicom_data.series[0]
    result = find(config, "--level", "instance", "--study-uid", series.study_uid,
                  "--series-uid", series.series_uid, "--format", "uids")
    assert sorted(result.stdout.splitlines()) == sorted(
        f"{i.study_uid}/{i.series_uid}/{i.sop_instance_uid}"
        for i in dicom_data.instances_of_series(series.series_uid))
    study = dicom_data.studies[0]
    result = find(config, "--level", "instance", "--study-uid", study.study_uid,
                  "--format", "uids")
    assert sorted(result.stdout.splitlines()) == sorted(
        f"{i.study_uid}/{i.series_uid}/{i.sop_instance_uid}"
        for i in dicom_data.instances_of_study(study.study_uid))


def test_patient_root(config: Path, dicom_data: Manifest) -> None:
    patients = find(config, "--root", "patient", "--level", "patient").jsonl()
    assert {value(r, PATIENT_ID) for r in patients} == {p.patient_id for p in dicom_data.patients}
    studies = find(config, "--root", "patient", "--patient-id", "PAT001").jsonl()
    assert {value(r, STUDY_UID) for r in studies} == {
        s.study_uid for s in dicom_data.studies_of("PAT001")}
    uids = find(config, "--root", "patient", "--level", "patient", "--format", "uids").stdout
    assert sorted(uids.split()) == sorted(p.patient_id for p in dicom_data.patients)


def test_limit_stops_after_n_matches(config: Path) -> None:
    assert len(find(config, "--limit", "2").jsonl()) == 2
    assert len(find(config, "--level", "series", "--limit", "3").jsonl()) == 3


def test_extra_keys_by_keyword_and_tag(config: Path, dicom_data: Manifest) -> None:
    study = dicom_data.studies[0]
    records = find(config, "-k", f"0008,0050={study.accession_number}", "-k", "StudyTime=",
                   "-k", "ReferringPhysicianName=").jsonl()
    assert [value(r, STUDY_UID) for r in records] == [study.study_uid]
    assert value(records[0], "00080030").startswith(study.study_time[:4])
    assert value(records[0], "00080090") == study.referring_physician
    rows = list(csv.reader(io.StringIO(find(config, "-k", "StudyTime=", "--format", "csv").stdout)))
    assert "StudyTime" in rows[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--date", "2024-02-30"), "--date '2024-02-30': 2024-02-30 is not a valid calendar date"),
        (("--level", "image"), "--level 'image' is not one of patient, study, series, instance"),
        (("-k", "PatientNmae=X"), "unknown DICOM keyword 'PatientNmae'"),
        (("--format", "xml"), "--format 'xml' is not one of"),
        (("--study-uid", "abc"), "'abc' is not a DICOM UID"),
    ],
)
def test_bad_input_is_one_line_usage_error(config: Path, args: tuple[str, ...],
                                           fragment: str) -> None:
    result = medimg("find", "pacs", *args, config=config)
    assert result.code == 2
    assert fragment in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_many_queries_on_one_association_lose_no_reply(
    config: Path, dicom_data: Manifest
) -> None:
    """A walk sends one C-FIND per study and series over one association, back to back.

    pynetdicom's pause handshake can let its own thread take a fast peer's
    reply off the queue (a lost match); medimg guards against it.
    """
    expected = sorted(
        f"{i.study_uid}/{i.series_uid}/{i.sop_instance_uid}" for i in dicom_data.instances)
    for _ in range(5):
        result = find(config, "--level", "instance", "--format", "uids")
        assert sorted(result.stdout.splitlines()) == expected
