"""FHIR pure logic: data types as text, study UIDs, OperationOutcome lines, and the client
against answers a real server would not give (httpx.MockTransport, for fault injection only).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from medimg_cli.errors import ExitCode, MedimgError, RefusedError, RemoteError, UsageError
from medimg_cli.fhir import client as fhir
from medimg_cli.fhir import model

# --------------------------------------------------------------------------
# model


def test_human_name_prefers_official_then_usual() -> None:
    names = [{"use": "nickname", "given": ["Jo"]},
             {"use": "usual", "family": "Doe", "given": ["Johnny"]},
             {"use": "official", "family": "Doe", "given": ["John", "Quincy"]}]
    assert model.human_name(names) == "Doe, John Quincy"
    assert model.human_name(names[:2]) == "Doe, Johnny"
    assert model.human_name([{"text": "山田 太郎"}]) == "山田 太郎"
    assert model.human_name([{"family": "Müller"}]) == "Müller"
    assert model.human_name(None) == ""


def test_identifier_label_is_type_else_system() -> None:
    mrn = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "MR"}]}, "system": "urn:x", "value": "123"}
    assert model.identifier(mrn) == "123 (MR)"
    assert model.identifier({"system": "urn:oid:1.2.3", "value": "9"}) == "9 (urn:oid:1.2.3)"
    assert model.identifier({"type": {"text": "Medical record"}, "value": "7"}) == \
        "7 (Medical record)"
    assert model.identifier({"value": "5"}) == "5"
    both = [{"value": "A"}, {"use": "official", "value": "B"}]
    assert model.identifiers(both) == "B, A"


def test_codeable_concept_text_then_display_then_code() -> None:
    assert model.codeable_concept({"text": "CT chest", "coding": [{"code": "x"}]}) == "CT chest"
    assert model.codeable_concept({"coding": [{"code": "18748-4", "display": "Imaging"}]}) == \
        "Imaging"
    assert model.codeable_concept(
        {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]}) == \
        "18748-4 (http://loinc.org)"
    assert model.codeable_concept({}) == ""


def test_reference_shows_the_included_resource_by_name() -> None:
    included: dict[str, dict[str, Any]] = {}
    model.index_included([{"resourceType": "Patient", "id": "p1",
                           "name": [{"family": "Ødegård", "given": ["Øyvind"]}]}], included)
    assert model.reference({"reference": "Patient/p1"}, included) == "Ødegård, Øyvind"
    assert model.reference({"reference": "http://h/fhir/Patient/p1"}, included) == \
        "Ødegård, Øyvind"
    assert model.reference({"reference": "Patient/p2", "display": "Someone"}, included) == \
        "Someone"
    assert model.reference({"reference": "Patient/p3"}) == "Patient/p3"


def test_study_uids_from_urn_dicom_uid_identifiers_only() -> None:
    study = {"identifier": [
        {"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.1"},
        {"system": "urn:dicom:uid", "value": "1.2.840.2"},
        {"system": "urn:other", "value": "urn:oid:9.9"},
        {"type": {"text": "ACSN"}, "value": "ACC1"},
    ]}
    assert model.study_uids(study) == ["1.2.840.1", "1.2.840.2"]
    assert model.study_uids({}) == []


def test_study_modalities_column_is_the_codes_once_each() -> None:
    dcm = "http://dicom.nema.org/resources/ontology/DCM"
    study = {"resourceType": "ImagingStudy", "id": "s1",
             "modality": [{"system": dcm, "code": "CT"}, {"system": dcm, "code": "PT"}],
             "series": [{"uid": "1.2", "modality": {"system": dcm, "code": "CT"}},
                        {"uid": "1.3", "modality": {"system": dcm, "code": "SR"}}]}
    cells = {h: get(study, {}) for h, get in model.columns_for("ImagingStudy")}
    assert cells["Modalities"] == "CT,PT,SR"


def test_generic_columns_for_types_without_their_own() -> None:
    headers = [h for h, _ in model.columns_for("Observation")]
    assert headers == ["Type", "ID", "Status", "Summary", "Updated"]
    obs = {"resourceType": "Observation", "id": "o1", "status": "final",
           "code": {"text": "Heart rate"}}
    assert [get(obs, {}) for _, get in model.columns_for("Observation")][:4] == \
        ["Observation", "o1", "final", "Heart rate"]


# --------------------------------------------------------------------------
# OperationOutcome, types and ids


def test_outcome_text_lists_every_issue() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "required", "diagnostics": "status missing",
         "expression": ["DiagnosticReport.status"]},
        {"severity": "warning", "code": "informational", "details": {"text": "note"}},
        {"severity": "fatal", "code": "exception"},
    ]}
    assert fhir.outcome_text(outcome) == (
        "error required: status missing (at DiagnosticReport.status); "
        "warning informational: note; fatal exception")


@pytest.mark.parametrize("bad", ["Patient/../metadata", "Patient/a b", "patient/1", "Patient",
                                 "Patient/" + "x" * 65])
def test_references_that_are_not_type_slash_id_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        fhir.parse_reference(bad)


def test_reference_with_history_is_the_resource() -> None:
    assert fhir.parse_reference("Patient/p-1.2/_history/3") == ("Patient", "p-1.2")


# --------------------------------------------------------------------------
# the client against scripted answers

Handler = Callable[[httpx.Request], httpx.Response]
BASE = "http://ehr.test/fhir/"


def client_for(handler: Handler) -> httpx.Client:
    return httpx.Client(base_url=BASE, transport=httpx.MockTransport(handler))


def bundle(ids: list[str], next_url: str | None = None, total: int | None = None
           ) -> dict[str, Any]:
    doc: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                           "entry": [{"resource": {"resourceType": "Patient", "id": i},
                                      "search": {"mode": "match"}} for i in ids]}
    if next_url:
        doc["link"] = [{"relation": "next", "url": next_url}]
    if total is not None:
        doc["total"] = total
    return doc


def test_next_link_to_another_host_is_refused() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=bundle(["a"], "http://elsewhere.test/fhir/Patient?p=2"))

    with client_for(handler) as client, pytest.raises(RemoteError) as caught:
        list(fhir.search_pages(client, "Patient", []))
    assert "next page is on another host (elsewhere.test)" in caught.value.message
    assert len(seen) == 1  # the credentials never went there


def test_relative_next_link_is_followed_and_a_repeated_link_ends_paging() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if "page=2" in str(request.url):
            return httpx.Response(200, json=bundle(["b"], "Patient?page=2"))  # loops
        return httpx.Response(200, json=bundle(["a"], "Patient?page=2"))

    with client_for(handler) as client:
        pages = list(fhir.search_pages(client, "Patient", [("name", "x")]))
    assert [m["id"] for p in pages for m in p.matches] == ["a", "b"]
    assert seen == ["http://ehr.test/fhir/Patient?name=x", "http://ehr.test/fhir/Patient?page=2"]


def test_search_asks_strict_handling_and_count_from_the_limit() -> None:
    asked: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json=bundle(["a", "b", "c"]))

    with client_for(handler) as client:
        (page,) = fhir.search_pages(client, "Patient", [], limit=2)
    assert [m["id"] for m in page.matches] == ["a", "b"]  # cut to the limit
    assert asked[0].url.params["_count"] == "2"
    assert asked[0].headers["Prefer"] == "handling=strict"


def test_bundle_outcomes_go_to_the_callback() -> None:
    doc = bundle(["a"])
    doc["entry"].append({"resource": {"resourceType": "OperationOutcome", "issue": [
        {"severity": "warning", "code": "not-supported", "diagnostics": "x ignored"}]},
        "search": {"mode": "outcome"}})
    warnings: list[str] = []
    with client_for(lambda r: httpx.Response(200, json=doc)) as client:
        (page,) = fhir.search_pages(client, "Patient", [],
                                    on_outcome=lambda o: warnings.append(fhir.outcome_text(o)))
    assert [m["id"] for m in page.matches] == ["a"]
    assert warnings == ["warning not-supported: x ignored"]


def _error(status: int, body: bytes, content_type: str) -> MedimgError:
    handler: Handler = lambda r: httpx.Response(status, content=body,  # noqa: E731
                                                headers={"Content-Type": content_type})
    with client_for(handler) as client, pytest.raises(MedimgError) as caught:
        fhir.read(client, "Patient", "p1")
    return caught.value


def test_error_answers_become_exit_codes() -> None:
    outcome = json.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": "database down"}]}).encode()
    five = _error(500, outcome, "application/fhir+json")
    assert five.exit_code == ExitCode.REMOTE
    assert isinstance(five, fhir.OperationOutcomeError)
    assert five.message == "read Patient/p1: HTTP 500 error processing: database down"
    plain = _error(502, b"Bad gateway", "text/plain")
    assert plain.exit_code == ExitCode.REMOTE and "HTTP 502 Bad Gateway: Bad gateway" in str(plain)
    refused = _error(403, outcome, "application/fhir+json")
    assert isinstance(refused, RefusedError) and refused.exit_code == ExitCode.REFUSED


def test_an_html_page_is_not_taken_for_a_resource() -> None:
    html = b"<html>login</html>"
    with client_for(lambda r: httpx.Response(200, content=html,
                                             headers={"Content-Type": "text/html"})) as client, \
            pytest.raises(RemoteError) as caught:
        fhir.read(client, "Patient", "p1")
    assert "not a FHIR JSON resource (text/html)" in caught.value.message


@pytest.mark.parametrize(("headers", "body", "expected"), [
    ({"Location": "http://ehr.test/fhir/DiagnosticReport/r1/_history/1"}, None, "r1"),
    ({"Location": "DiagnosticReport/r2"}, None, "r2"),
    ({}, {"resourceType": "DiagnosticReport", "id": "r3"}, "r3"),
])
def test_create_takes_the_id_from_location_else_the_body(
    headers: dict[str, str], body: dict[str, Any] | None, expected: str
) -> None:
    posted: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return httpx.Response(201, headers=headers, json=body)

    with client_for(handler) as client:
        new_id, _ = fhir.create(client, {"resourceType": "DiagnosticReport", "status": "final"})
    assert new_id == expected
    assert posted[0].method == "POST" and str(posted[0].url) == f"{BASE}DiagnosticReport"
    assert posted[0].headers["Content-Type"].startswith("application/fhir+json")


def test_a_rejected_create_hints_at_the_resource_not_at_search_parameters() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "required", "diagnostics": "status is missing"}]}
    with client_for(lambda r: httpx.Response(400, json=outcome)) as client, \
            pytest.raises(RemoteError) as caught:
        fhir.create(client, {"resourceType": "DiagnosticReport"})
    assert caught.value.hint is not None and "search parameters" not in caught.value.hint
    assert "resource" in caught.value.hint


def test_create_without_any_id_is_a_remote_error() -> None:
    with client_for(lambda r: httpx.Response(201)) as client, pytest.raises(RemoteError):
        fhir.create(client, {"resourceType": "DiagnosticReport"})


def test_fhir_help_loads_no_protocol_library() -> None:
    import subprocess
    import sys

    probe = (
        "import io, contextlib, sys\nfrom medimg_cli.cli.app import run\n"
        "for argv in (['fhir', '--help'], ['fhir', 'studies', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out: run(argv)\n"
        "    assert '--patient' in out.getvalue() or 'studies' in out.getvalue()\n"
        "print(','.join(m for m in ('httpx', 'keyring', 'pydicom', 'pynetdicom') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == ""
