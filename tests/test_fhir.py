"""`medimg fhir ...` and `echo` with a fhir profile, against sekmet-fhir on loopback.

The server requires SMART JWT access tokens; the tests mint them (HS256, the
server's shared secret) and hand them over through the profile's `token_env`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from cli_helpers import Result, medimg, write_config
from dicom_data import Manifest
from fhir_peer import (
    MRN_SYSTEM,
    ORGANIZATION_ID,
    PAGING_COUNT,
    PAGING_FAMILY,
    READ_SCOPE,
    REPORT_CONCLUSION,
    REPORT_ID,
    WRITE_SCOPE,
    FhirServer,
    patient_fhir_id,
    study_fhir_id,
)
from peers import Orthanc


@pytest.fixture
def config(tmp_path: Path, fhir_server: FhirServer) -> Path:
    return write_config(
        tmp_path / "c.toml",
        fhir_server.profile_toml("ehr"),
        fhir_server.profile_toml("anon", auth="none", token_env=None),
    )


def fhir(server: FhirServer, config: Path, *args: str, scope: str = READ_SCOPE,
         token: str | None = None, input: str | None = None) -> Result:
    """`medimg ARGS` with an access token of `scope` in $FHIR_TOKEN."""
    env = {"FHIR_TOKEN": token if token is not None else server.token(scope)}
    return medimg(*args, config=config, env=env, input=input)


def one_line_error(result: Result) -> str:
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


# --------------------------------------------------------------------------
# patient: read and every search flag


def test_patient_read_prints_the_resource_itself(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", "pat004", "--format", "json")
    assert result.code == 0, result.stderr
    patient = json.loads(result.stdout)
    assert patient["resourceType"] == "Patient" and patient["id"] == "pat004"
    assert patient["name"][0] == {"use": "official", "family": "Müller", "given": ["Jürgen"]}


def test_patient_read_table_renders_name_and_identifier(
    fhir_server: FhirServer, config: Path
) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", "pat005", "-f", "table")
    assert result.code == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["ID", "Name", "Identifier", "Birth", "date", "Gender"]
    assert "山田, 太郎" in row and "PAT005 (MR)" in row and "1992-03-03" in row


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--identifier", f"{MRN_SYSTEM}|PAT004"], ["pat004"]),
        (["--identifier", "PAT002"], ["pat002"]),
        (["--identifier", "http://other.example.org/mrn|PAT004"], []),
        (["--name", "Mül"], ["pat004"]),
        (["--name", "太郎"], ["pat005"]),
        (["--family", "DOE"], ["pat001", "pat002"]),
        (["--given", "ANNA"], ["pat003"]),
        (["--family", "DOE", "--given", "JANE"], ["pat002"]),
        (["--birthdate", "1988-02-29"], ["pat003"]),
        (["--birthdate", "19600615"], ["pat004"]),
        (["--birthdate", "ge2005-01-01", "--gender", "other"], ["pat006"]),
        (["--gender", "female"], ["pat002", "pat003"]),
    ],
)
def test_patient_search_by_each_flag(
    fhir_server: FhirServer, config: Path, options: list[str], expected: list[str]
) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", *options)
    assert result.code == 0, result.stderr
    patients = result.jsonl()
    assert all(p["resourceType"] == "Patient" for p in patients)
    assert sorted(p["id"] for p in patients) == expected


def test_patient_search_follows_next_links_up_to_the_limit(
    fhir_server: FhirServer, config: Path
) -> None:
    result = fhir(fhir_server, config, "-vv", "fhir", "patient", "ehr", "--family",
                  PAGING_FAMILY, "--page-size", "2", "--limit", "5")
    assert result.code == 0, result.stderr
    assert [p["id"] for p in result.jsonl()] == [f"pager-{n}" for n in range(1, 6)]
    requests = [ln for ln in result.stderr.splitlines() if "GET http" in ln]
    assert len(requests) == 3  # pages of 2, 2, 2 (the last cut to 1)
    assert "_offset=4" in requests[-1]
    assert f"5 of {PAGING_COUNT} matches shown (--limit 5)" in result.stderr


def test_patient_search_without_limit_reads_every_page(
    fhir_server: FhirServer, config: Path
) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", "--family", PAGING_FAMILY,
                  "--page-size", "3", "--limit", "0")
    assert result.code == 0, result.stderr
    assert len(result.jsonl()) == PAGING_COUNT


def test_patient_id_and_search_flags_together_are_a_usage_error(
    fhir_server: FhirServer, config: Path
) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", "pat001", "--name", "DOE")
    assert result.code == 2
    assert "not both" in one_line_error(result)


def test_patient_bad_gender_is_a_usage_error(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", "--gender", "f")
    assert result.code == 2
    assert "male, female, other, unknown" in one_line_error(result)


# --------------------------------------------------------------------------
# output formats


def test_patient_search_csv_has_readable_columns(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", "--family", "Müller",
                  "-f", "csv")
    assert result.code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows == [{"ID": "pat004", "Name": "Müller, Jürgen", "Identifier": "PAT004 (MR)",
                     "Birth date": "1960-06-15", "Gender": "male"}]


def test_search_json_is_an_array_of_resources(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", "--family", "DOE", "-f", "json")
    assert result.code == 0, result.stderr
    patients = json.loads(result.stdout)
    assert isinstance(patients, list)
    assert sorted(p["id"] for p in patients) == ["pat001", "pat002"]
    assert all("meta" in p for p in patients)  # the resources as the server sent them


def test_piped_default_is_jsonl(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", "pat001")
    assert result.code == 0, result.stderr
    (patient,) = result.jsonl()
    assert patient["id"] == "pat001" and result.stdout.count("\n") == 1


# --------------------------------------------------------------------------
# studies


def _ids(result: Result) -> list[str]:
    assert result.code == 0, result.stderr
    return [r["id"] for r in result.jsonl()]


def test_studies_of_a_patient_sorted_newest_first(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "studies", "ehr", "--patient", "pat001",
                  "--sort", "-started")
    assert _ids(result) == ["is-extra-newest", "is-acc0002", "is-acc0001",
                            "is-extra-registered", "is-extra-cancelled"]
    assert all(s["resourceType"] == "ImagingStudy" for s in result.jsonl())  # no includes


def test_studies_status_and_since_filters(fhir_server: FhirServer, config: Path) -> None:
    available = fhir(fhir_server, config, "fhir", "studies", "ehr", "-p", "pat001",
                     "--status", "available", "--sort", "started")
    assert _ids(available) == ["is-acc0001", "is-acc0002", "is-extra-newest"]
    since = fhir(fhir_server, config, "fhir", "studies", "ehr", "-p", "pat001",
                 "--since", "2024-06-01", "--sort", "started")
    assert _ids(since) == ["is-acc0002", "is-extra-newest"]
    since_dicom_style = fhir(fhir_server, config, "fhir", "studies", "ehr", "-p", "pat001",
                             "--since", "20240601", "--status", "available", "--sort", "-started")
    assert _ids(since_dicom_style) == ["is-extra-newest", "is-acc0002"]


def test_studies_paging_with_a_limit(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "studies", "ehr", "-p", "pat001",
                  "--sort", "-started", "--page-size", "2", "--limit", "3")
    assert _ids(result) == ["is-extra-newest", "is-acc0002", "is-acc0001"]


def test_studies_table_shows_patient_names_from_the_include(
    fhir_server: FhirServer, config: Path, dicom_data: Manifest
) -> None:
    result = fhir(fhir_server, config, "fhir", "studies", "ehr", "-p", "pat004", "-f", "table",
                  "--sort", "started")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "Patient", "Started"]
    studies = dicom_data.studies_of("PAT004")
    assert len(lines) == 1 + len(studies)
    for line, study in zip(lines[1:], studies, strict=True):
        assert line.startswith(study_fhir_id(study.accession_number))
        assert "Müller, Jürgen" in line and study.study_uid in line
        assert study.description in line


def test_studies_csv_columns(fhir_server: FhirServer, config: Path, dicom_data: Manifest) -> None:
    result = fhir(fhir_server, config, "fhir", "studies", "ehr", "-p", "pat005", "-f", "csv")
    assert result.code == 0, result.stderr
    (row,) = csv.DictReader(io.StringIO(result.stdout))
    (study,) = dicom_data.studies_of("PAT005")
    assert row["Patient"] == "山田, 太郎"
    assert row["Study UID"] == study.study_uid
    assert row["Modalities"] == "MR" and row["Description"] == "MR 頭部"
    assert row["Instances"] == str(len(dicom_data.instances_of_study(study.study_uid)))


def test_studies_uids_strip_urn_oid_and_skip_studies_without_one(
    fhir_server: FhirServer, config: Path, dicom_data: Manifest
) -> None:
    result = fhir(fhir_server, config, "fhir", "studies", "ehr", "-p", "pat001",
                  "--sort", "-started", "-f", "uids")
    assert result.code == 0, result.stderr
    first, second = dicom_data.studies_of("PAT001")
    assert result.stdout.splitlines() == [
        "2.25.900000000000000000000000000000000003",  # stored without urn:oid:
        second.study_uid, first.study_uid,
        "2.25.900000000000000000000000000000000001",
    ]
    assert "ImagingStudy/is-extra-cancelled has no DICOM Study Instance UID" in result.stderr


def test_studies_uids_pipe_into_wadoget(
    tmp_path: Path, fhir_server: FhirServer, dicom_data: Manifest, orthanc: Orthanc
) -> None:
    config = write_config(
        tmp_path / "c.toml", fhir_server.profile_toml("ehr"),
        f'[profiles.pacs-web]\ntype = "dicomweb"\nurl = "{orthanc.dicomweb_url}"\n')
    uids = fhir(fhir_server, config, "fhir", "studies", "ehr", "-p", patient_fhir_id("PAT004"),
                "--format", "uids")
    assert uids.code == 0, uids.stderr
    out = tmp_path / "out"
    fetched = medimg("-q", "wadoget", "pacs-web", "--uids-from", "-", "--out", str(out),
                     config=config, input=uids.stdout)
    assert fetched.code == 0, fetched.stderr
    wanted = {i.sop_instance_uid for s in dicom_data.studies_of("PAT004")
              for i in dicom_data.instances_of_study(s.study_uid)}
    assert {p.stem for p in out.rglob("*.dcm")} == wanted


# --------------------------------------------------------------------------
# report (create), get, search


def test_report_create_prints_the_id_and_reads_back(fhir_server: FhirServer, config: Path) -> None:
    created = fhir(fhir_server, config, "fhir", "report", "ehr", "--patient", "pat003",
                   "--code", "18748-4", "--conclusion", "Kein Nachweis einer Fraktur.",
                   "--study", "is-acc0005", "--status", "preliminary", scope=WRITE_SCOPE)
    assert created.code == 0, created.stderr
    new_id = created.stdout.strip()
    assert new_id and "\n" not in new_id
    assert f"created DiagnosticReport/{new_id}" in created.stderr
    back = fhir(fhir_server, config, "fhir", "get", "ehr", f"DiagnosticReport/{new_id}",
                "-f", "json")
    assert back.code == 0, back.stderr
    report = json.loads(back.stdout)
    assert report["status"] == "preliminary"
    assert report["conclusion"] == "Kein Nachweis einer Fraktur."
    assert report["subject"] == {"reference": "Patient/pat003"}
    assert report["code"]["coding"] == [{"system": "http://loinc.org", "code": "18748-4"}]
    assert report["imagingStudy"] == [{"reference": "ImagingStudy/is-acc0005"}]


def test_report_from_file_with_json_output(
    tmp_path: Path, fhir_server: FhirServer, config: Path
) -> None:
    resource = {"resourceType": "DiagnosticReport", "status": "final",
                "code": {"text": "Röntgen Thorax"}, "subject": {"reference": "Patient/pat004"},
                "conclusion": "Unauffällig."}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(resource, ensure_ascii=False), encoding="utf-8")
    created = fhir(fhir_server, config, "fhir", "report", "ehr", "--from-file", str(path),
                   "-f", "jsonl", scope=WRITE_SCOPE)
    assert created.code == 0, created.stderr
    (stored,) = created.jsonl()
    assert stored["conclusion"] == "Unauffällig." and stored["id"]
    search = fhir(fhir_server, config, "fhir", "search", "ehr", "DiagnosticReport",
                  "subject=Patient/pat004")
    assert stored["id"] in _ids(search)


def test_report_from_stdin(fhir_server: FhirServer, config: Path) -> None:
    resource = {"resourceType": "DiagnosticReport", "status": "final",
                "code": {"text": "MR Knie"}, "subject": {"reference": "Patient/pat001"}}
    created = fhir(fhir_server, config, "fhir", "report", "ehr", "--from-file", "-",
                   scope=WRITE_SCOPE, input=json.dumps(resource))
    assert created.code == 0, created.stderr
    back = fhir(fhir_server, config, "fhir", "get", "ehr",
                f"DiagnosticReport/{created.stdout.strip()}")
    assert back.code == 0 and back.jsonl()[0]["code"] == {"text": "MR Knie"}


def test_report_needs_patient_code_and_conclusion(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "report", "ehr", "--patient", "pat001",
                  scope=WRITE_SCOPE)
    assert result.code == 2
    assert "missing --code, --conclusion" in one_line_error(result)


def _no_server_config(tmp_path: Path) -> Path:
    """A fhir profile nobody answers on: the errors below come before any request."""
    return write_config(tmp_path / "c.toml", '[profiles.ehr]\ntype = "fhir"\n'
                        'url = "http://127.0.0.1:9/fhir"\nauth = "none"\n')


def test_report_from_a_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(b"\xff\xfe{}")
    result = medimg("fhir", "report", "ehr", "--from-file", str(path),
                    config=_no_server_config(tmp_path))
    assert result.code == 2
    assert f"--from-file {path}: not UTF-8 text" in one_line_error(result)


@pytest.mark.parametrize(("code", "empty"), [("|", "code"), ("http://loinc.org|", "code"),
                                             ("|18748-4", "system before '|'")])
def test_report_with_an_empty_code_or_system_is_a_usage_error(
    tmp_path: Path, code: str, empty: str
) -> None:
    result = medimg("fhir", "report", "ehr", "--patient", "pat001", "--code", code,
                    "--conclusion", "ok", config=_no_server_config(tmp_path))
    assert result.code == 2
    assert one_line_error(result).startswith(f"medimg: --code '{code}': the {empty} is empty;")


@pytest.mark.parametrize(("args", "expected"), [
    (["-p", "a b"], "medimg: 'a b' is not a FHIR id;"),
    (["-p", "pat001", "--status", "done"], "medimg: --status 'done' is not one of registered,"),
    (["-p", "pat001", "--status", "available,bogus"], "medimg: --status 'available,bogus' is"),
])
def test_studies_with_a_bad_patient_id_or_status_is_a_usage_error(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = medimg("fhir", "studies", "ehr", *args, config=_no_server_config(tmp_path))
    assert result.code == 2
    assert one_line_error(result).startswith(expected)


def test_get_seeded_report_as_table(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "get", "ehr", f"DiagnosticReport/{REPORT_ID}",
                  "-f", "table")
    assert result.code == 0, result.stderr
    row = result.stdout.splitlines()[1]
    assert REPORT_ID in row and "Diagnostic imaging study" in row and "final" in row
    assert REPORT_CONCLUSION in row


def test_generic_search_with_key_value_pairs(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "search", "ehr", "DiagnosticReport",
                  "code=http://loinc.org|18748-4", "subject=Patient/pat001", "status=final")
    assert REPORT_ID in _ids(result)


def test_generic_search_table_for_a_type_without_its_own_columns(
    fhir_server: FhirServer, config: Path
) -> None:
    result = fhir(fhir_server, config, "fhir", "search", "ehr", "Organization",
                  "name=MEDIMG", "-f", "table")
    assert result.code == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["Type", "ID", "Status", "Summary", "Updated"]
    assert row.split()[:5] == ["Organization", ORGANIZATION_ID, "MEDIMG", "TEST", "HOSPITAL"]


def test_generic_search_argument_must_be_key_value(fhir_server: FhirServer, config: Path) -> None:
    bad = fhir(fhir_server, config, "fhir", "search", "ehr", "Patient", "family")
    assert bad.code == 2 and "is not KEY=VALUE" in one_line_error(bad)


# --------------------------------------------------------------------------
# errors: OperationOutcome (exit 5), 401 and 403 (exit 4)


def test_unknown_search_parameter_shows_the_operation_outcome(
    fhir_server: FhirServer, config: Path
) -> None:
    result = fhir(fhir_server, config, "fhir", "search", "ehr", "Patient", "nmae=DOE")
    assert result.code == 5
    line = one_line_error(result)
    assert "HTTP 400 error not-supported: Unknown search parameter 'nmae'" in line


def test_bad_search_value_shows_the_operation_outcome(
    fhir_server: FhirServer, config: Path
) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", "--birthdate", "soon")
    assert result.code == 5
    assert "error value: Invalid date search value 'soon'" in one_line_error(result)


def test_read_of_a_missing_id_shows_the_operation_outcome(
    fhir_server: FhirServer, config: Path
) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", "no-such-patient")
    assert result.code == 5
    line = one_line_error(result)
    assert "HTTP 404 error not-found: Patient/no-such-patient not found" in line


def test_unknown_resource_type_is_a_remote_failure(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "search", "ehr", "Imagingstudy")
    assert result.code == 5
    assert "Unknown resource type 'Imagingstudy'" in one_line_error(result)


def test_since_that_is_no_date_is_a_usage_error(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "studies", "ehr", "-p", "pat001", "--since", "soon")
    assert result.code == 2
    assert "--since 'soon' is not a date" in one_line_error(result)


def test_no_token_is_401_exit_4(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "patient", "anon", "pat001")
    assert result.code == 4
    assert "HTTP 401 error login: Authentication required" in one_line_error(result)


def test_expired_token_is_401_exit_4(fhir_server: FhirServer, config: Path) -> None:
    token = fhir_server.token(READ_SCOPE, lifetime=-120)
    result = fhir(fhir_server, config, "fhir", "patient", "ehr", "pat001", token=token)
    assert result.code == 4
    assert "HTTP 401 error expired: Access token expired" in one_line_error(result)
    assert token not in result.stderr


def test_create_without_write_scope_is_403_exit_4(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "fhir", "report", "ehr", "-p", "pat001",
                  "--code", "18748-4", "--conclusion", "x", scope=READ_SCOPE)
    assert result.code == 4
    line = one_line_error(result)
    assert "HTTP 403 error forbidden" in line and "DiagnosticReport" in line


def test_a_dicom_profile_is_refused_by_fhir_commands(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml",
                          '[profiles.pacs]\ntype = "dicomweb"\nurl = "http://127.0.0.1:9"\n')
    result = medimg("fhir", "patient", "pacs", "x", config=config)
    assert result.code == 2
    assert "`fhir patient` does not work with profile 'pacs'" in one_line_error(result)


# --------------------------------------------------------------------------
# echo


def test_echo_reports_fhir_version_software_and_smart(
    fhir_server: FhirServer, config: Path
) -> None:
    result = fhir(fhir_server, config, "echo", "ehr", "--format", "json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["fhirVersion"] == "4.0.1"
    assert doc["software"]["name"] == "SEKMET FHIR R4 Tester"
    root = fhir_server.url.removesuffix("/fhir")
    assert doc["smart"]["token_endpoint"] == f"{root}/auth/token"
    assert doc["echoes"][0]["status"] == 200


def test_echo_lines_and_summary(fhir_server: FhirServer, config: Path) -> None:
    result = fhir(fhir_server, config, "echo", "ehr", "-c", "2", "-i", "0", "-f", "table")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(f"GET {fhir_server.url}/metadata: seq=2 HTTP 200 time=")
    assert "FHIR 4.0.1 server: SEKMET FHIR R4 Tester" in result.stderr
    assert "SMART: token endpoint" in result.stderr


def test_the_token_never_appears_in_output_or_vv_logs(
    fhir_server: FhirServer, config: Path
) -> None:
    token = fhir_server.token(READ_SCOPE)
    runs = [
        fhir(fhir_server, config, "-vv", "fhir", "studies", "ehr", "-p", "pat001", "-f", "table",
             token=token),
        fhir(fhir_server, config, "-vv", "fhir", "report", "ehr", "-p", "pat001", "--code", "1",
             "--conclusion", "x", token=token),  # 403
        fhir(fhir_server, config, "-vv", "echo", "ehr", token=token),
    ]
    assert [r.code for r in runs] == [0, 4, 0]
    for result in runs:
        assert "<redacted>" in result.stderr  # the Authorization header was logged, redacted
        assert token not in result.stdout + result.stderr
        assert token.split(".")[2] not in result.stdout + result.stderr
