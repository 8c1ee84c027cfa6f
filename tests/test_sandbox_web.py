"""`medimg sandbox`, HTTP side: DICOMweb answering as Orthanc does for the same data
(QIDO-RS compared with Orthanc's plugin), medimg's own find / wadoget / stow over
DICOMweb against it, FHIR R4 (Patient, ImagingStudy, DiagnosticReport, paging,
OperationOutcome), and bad requests answered with HTTP errors while it keeps serving.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Result, medimg, write_config
from dicom_data import Manifest, generate
from peers import Orthanc
from sandbox_peer import Sandbox
from test_move_get import assert_retrieved

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


@pytest.fixture
def config(tmp_path: Path, sandbox: Sandbox) -> Path:
    return write_config(tmp_path / "c.toml", sandbox.profile_toml("dimse"),
                        sandbox.dicomweb_profile_toml("web"), sandbox.fhir_profile_toml("ehr"))


@pytest.fixture
def fresh_sandbox(tmp_path: Path) -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def start(**kwargs: Any) -> Sandbox:
        peer = Sandbox.start(tmp_path / f"sandbox-{len(started)}", **kwargs)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop(graceful=False)


def run(config: Path, *args: str) -> Result:
    result = medimg(*args, config=config)
    assert result.code == 0, result.stderr
    return result


def get_json(peer: Sandbox | Orthanc, path: str) -> Any:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(f"{peer.http_url}{path}",
                                 headers={"Accept": "application/dicom+json"})
    with opener.open(req, timeout=30) as resp:
        return json.loads(resp.read())


def normalised(records: list[dict[str, Any]], base: str) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True).replace(base, "BASE") for r in records)


def biggest_study(data: Manifest) -> str:
    return max(data.studies, key=lambda s: len(data.instances_of_study(s.study_uid))).study_uid


# --------------------------------------------------------------------------
# QIDO-RS: the same answers as Orthanc's DICOMweb plugin


@pytest.mark.parametrize(
    "query",
    [
        "studies",
        "series",
        "instances",
        "studies?PatientName=doe*",
        "studies?ModalitiesInStudy=CT,MR",
        "studies?StudyDate=20240101-20240131",
        "studies?StudyTime=&InstitutionName=",
        "studies?includefield=StudyDescription",
        "series?Modality=CT&PatientName=DOE*",
        "instances?PatientID=PAT003",
        "studies?PatientID=NOBODY",
    ],
)
def test_qido_answers_as_orthanc_does(sandbox: Sandbox, orthanc: Orthanc, query: str) -> None:
    ours = get_json(sandbox, f"/dicom-web/{query}")
    theirs = get_json(orthanc, f"/dicom-web/{query}")
    assert normalised(ours, sandbox.dicomweb_url) == normalised(theirs, orthanc.dicomweb_url)


def test_qido_below_a_study_answers_as_orthanc_does(sandbox: Sandbox, orthanc: Orthanc,
                                                    dicom_data: Manifest) -> None:
    study = biggest_study(dicom_data)
    for path in (f"studies/{study}/series", f"studies/{study}/instances"):
        ours = get_json(sandbox, f"/dicom-web/{path}")
        theirs = get_json(orthanc, f"/dicom-web/{path}")
        assert ours and normalised(ours, sandbox.dicomweb_url) == normalised(
            theirs, orthanc.dicomweb_url)


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--name", "DOE*"),
        ("--date", "20240101-20240131"),
        ("--modality", "CT,MR"),
        ("--patient-id", "PAT004"),
        ("--name", "山田*"),
        ("--level", "series", "--modality", "CT"),
        ("--level", "instance", "--patient-id", "PAT003"),
        ("-k", "StudyTime=", "-k", "InstitutionName="),
    ],
)
def test_find_over_qido_and_c_find_print_the_same(config: Path, args: tuple[str, ...]) -> None:
    dimse = run(config, "find", "dimse", *args).jsonl()
    web = run(config, "find", "web", *args).jsonl()
    assert dimse
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(web, key=key) == sorted(dimse, key=key)


def test_qido_limit_and_offset_page_through(sandbox: Sandbox, dicom_data: Manifest) -> None:
    seen: list[str] = []
    for offset in range(0, len(dicom_data.studies), 3):
        page = get_json(sandbox, f"/dicom-web/studies?limit=3&offset={offset}")
        assert len(page) <= 3
        seen += [r[STUDY_UID]["Value"][0] for r in page]
    assert sorted(seen) == sorted(s.study_uid for s in dicom_data.studies)


def test_dicomweb_echo(config: Path, sandbox: Sandbox) -> None:
    echoes = run(config, "echo", "web", "--count", "2", "--interval", "0").jsonl()
    assert [e["status"] for e in echoes] == [200, 200]


# --------------------------------------------------------------------------
# WADO-RS with medimg wadoget


def test_wadoget_study_series_instance(config: Path, tmp_path: Path,
                                       dicom_data: Manifest) -> None:
    study = biggest_study(dicom_data)
    run(config, "wadoget", "web", "--out", str(tmp_path / "s"), study)
    assert_retrieved(tmp_path / "s", dicom_data.instances_of_study(study))
    series = dicom_data.series_of(study)[0]
    run(config, "wadoget", "web", "--out", str(tmp_path / "se"), study, series.series_uid)
    assert_retrieved(tmp_path / "se", dicom_data.instances_of_series(series.series_uid))
    inst = dicom_data.instances_of_series(series.series_uid)[0]
    run(config, "wadoget", "web", "--out", str(tmp_path / "i"), study, series.series_uid,
        inst.sop_instance_uid)
    assert_retrieved(tmp_path / "i", [inst])
    # get with a dicomweb profile retrieves by WADO-RS too
    run(config, "get", "web", "--out", str(tmp_path / "g"), study)
    assert_retrieved(tmp_path / "g", dicom_data.instances_of_study(study))


def test_wado_metadata_and_frames(config: Path, tmp_path: Path, sandbox: Sandbox,
                                  dicom_data: Manifest) -> None:
    import pydicom

    inst = dicom_data.instances[0]
    docs = get_json(sandbox, f"/dicom-web/studies/{inst.study_uid}/metadata")
    assert {d[SOP_UID]["Value"][0] for d in docs} == {
        i.sop_instance_uid for i in dicom_data.instances_of_study(inst.study_uid)}
    assert all("BulkDataURI" in d["7FE00010"] for d in docs)
    mine = next(d for d in docs if d[SOP_UID]["Value"][0] == inst.sop_instance_uid)
    bulk = mine["7FE00010"]["BulkDataURI"].removeprefix(sandbox.http_url)
    status, _, body = sandbox.get(bulk, "multipart/related; "
                                  'type="application/octet-stream"')
    assert status == 200 and pydicom.dcmread(inst.path).PixelData in body
    out = tmp_path / "frames"
    run(config, "wadoget", "web", "--frames", "1", "--out", str(out), inst.study_uid,
        inst.series_uid, inst.sop_instance_uid)
    frames = [p for p in out.rglob("*") if p.is_file()]
    assert len(frames) == 1
    assert frames[0].read_bytes() == pydicom.dcmread(inst.path).PixelData


def test_wado_unknown_study_is_404(sandbox: Sandbox) -> None:
    status, _, body = sandbox.get("/dicom-web/studies/1.2.3.4", "multipart/related; "
                                  'type="application/dicom"')
    assert status == 404 and b"no such study" in body


# --------------------------------------------------------------------------
# STOW-RS with medimg stow, and bad requests


def test_stow_then_find_and_bad_parts(fresh_sandbox: Callable[..., Sandbox],
                                      tmp_path: Path) -> None:
    other = generate(tmp_path / "other", seed=91)
    peer = fresh_sandbox()
    config = write_config(tmp_path / "c.toml", peer.dicomweb_profile_toml("web"),
                          peer.profile_toml("dimse"))
    study = other.studies[2]
    paths = [str(i.path) for i in other.instances_of_study(study.study_uid)]
    stowed = run(config, "stow", "web", *paths)
    assert {line["status"] for line in stowed.jsonl()} == {"stored"}
    again = run(config, "stow", "web", *paths)  # already stored: 200, as Orthanc
    assert {line["status"] for line in again.jsonl()} == {"stored"}
    found = run(config, "find", "dimse", "--level", "instance", "--format", "uids")
    assert sorted(found.stdout.split()) == sorted(
        f"{i.study_uid}/{i.series_uid}/{i.sop_instance_uid}"
        for i in other.instances_of_study(study.study_uid))

    # one DICOM part and one that is not: 409, the good one stored, the other listed
    boundary = uuid.uuid4().hex
    good = other.instances_of_study(other.studies[3].study_uid)[0]
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + good.path.read_bytes()
            + f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + b"this is not DICOM"
            + f"\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\nhello".encode()
            + f"\r\n--{boundary}--\r\n".encode())
    status, _, answer = peer.request(
        "POST", "/dicom-web/studies", body,
        f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert status == 409
    doc = json.loads(answer)
    assert [i["00081155"]["Value"][0] for i in doc["00081199"]["Value"]] == [
        good.sop_instance_uid]
    assert [i["00081197"]["Value"][0] for i in doc["00081198"]["Value"]] == [0xC000, 0xC000]
    # not multipart at all, and a multipart body without the announced boundary
    status, _, _ = peer.request("POST", "/dicom-web/studies", b"{}", "application/json")
    assert status == 415
    status, _, _ = peer.request("POST", "/dicom-web/studies", b"garbage",
                                'multipart/related; type="application/dicom"; boundary=xyz')
    assert status == 400
    # and it keeps serving
    assert run(config, "echo", "web").jsonl()[0]["status"] == 200
    found = get_json(peer, f"/dicom-web/studies/{good.study_uid}/instances")
    assert [r[SOP_UID]["Value"][0] for r in found] == [good.sop_instance_uid]


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("studies?limit=abc", b"limit must be a non-negative integer"),
        ("studies?PatientNmae=X", b"'PatientNmae' is not a DICOM attribute"),
        ("studies?includefield=Nope", b"'Nope' is not a DICOM attribute"),
        ("studies?a=1&&b", b"is not valid"),
        ("studies/not-a-uid/series", b"is not a UID"),
    ],
)
def test_invalid_qido_is_400_and_the_sandbox_keeps_serving(sandbox: Sandbox, query: str,
                                                           fragment: bytes) -> None:
    status, _headers, body = sandbox.get(f"/dicom-web/{query}")
    assert status == 400, body
    assert fragment in body
    assert sandbox.get("/dicom-web/studies?limit=1")[0] == 200


# --------------------------------------------------------------------------
# FHIR R4


def test_fhir_patient_read_and_search(config: Path, dicom_data: Manifest) -> None:
    read = run(config, "fhir", "patient", "ehr", "PAT005", "--format", "json")
    patient = json.loads(read.stdout)
    patient = patient[0] if isinstance(patient, list) else patient
    assert patient["resourceType"] == "Patient" and patient["id"] == "PAT005"
    assert patient["name"][0]["family"] == "山田" and patient["birthDate"] == "1992-03-03"
    found = run(config, "fhir", "patient", "ehr", "--name", "müller", "--format", "jsonl")
    assert [r["id"] for r in found.jsonl()] == ["PAT004"]
    by_id = run(config, "fhir", "patient", "ehr", "--identifier",
                "urn:medimg:sandbox:patient-id|PAT002", "--format", "jsonl")
    assert [r["id"] for r in by_id.jsonl()] == ["PAT002"]
    everyone = run(config, "fhir", "patient", "ehr", "--page-size", "2", "--format", "jsonl")
    assert sorted(r["id"] for r in everyone.jsonl()) == sorted(
        p.patient_id for p in dicom_data.patients)


def test_fhir_imaging_studies_with_dicom_uids(config: Path, dicom_data: Manifest) -> None:
    result = run(config, "fhir", "studies", "ehr", "--patient", "PAT001", "--format", "uids")
    assert sorted(result.stdout.split()) == sorted(
        s.study_uid for s in dicom_data.studies_of("PAT001"))
    studies = run(config, "fhir", "studies", "ehr", "--patient", "PAT003",
                  "--format", "jsonl").jsonl()
    for study in studies:
        uid = study["identifier"][0]
        assert uid["system"] == "urn:dicom:uid"
        manifest = dicom_data.study(uid["value"].removeprefix("urn:oid:"))
        assert study["numberOfInstances"] == len(dicom_data.instances_of_study(
            manifest.study_uid))
        assert study["status"] == "available"


def test_fhir_bundles_page_with_next_links(sandbox: Sandbox, dicom_data: Manifest) -> None:
    path = "/fhir/ImagingStudy?status=available&_count=3"
    ids: list[str] = []
    pages = 0
    while path:
        status, _, body = sandbox.get(path, "application/fhir+json")
        assert status == 200
        bundle = json.loads(body)
        assert bundle["type"] == "searchset" and bundle["total"] == len(dicom_data.studies)
        ids += [e["resource"]["id"] for e in bundle["entry"]]
        pages += 1
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        path = nxt[0].removeprefix(sandbox.http_url) if nxt else ""
    assert pages == 4
    assert sorted(ids) == sorted(s.study_uid for s in dicom_data.studies)


def test_fhir_report_create_and_read(config: Path, sandbox: Sandbox,
                                     dicom_data: Manifest) -> None:
    study = dicom_data.studies_of("PAT001")[0].study_uid
    created = run(config, "fhir", "report", "ehr", "--patient", "PAT001", "--code", "18748-4",
                  "--conclusion", "No acute findings.", "--study", study)
    report_id = created.stdout.strip()
    assert report_id
    read = json.loads(run(config, "fhir", "get", "ehr", f"DiagnosticReport/{report_id}",
                          "--format", "json").stdout)
    read = read[0] if isinstance(read, list) else read
    assert read["conclusion"] == "No acute findings." and read["status"] == "final"
    status, _, body = sandbox.get("/fhir/DiagnosticReport?patient=PAT001")
    assert status == 200 and report_id in body.decode()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/fhir/Patient/NOPE", b"", 404, "not-found"),
        ("GET", "/fhir/ImagingStudy/1.2.3", b"", 404, "not-found"),
        ("GET", "/fhir/Observation", b"", 404, "not-supported"),
        ("GET", "/fhir/Patient?shoe-size=42", b"", 400, "not-supported"),
        ("POST", "/fhir/DiagnosticReport", b"{not json", 400, "structure"),
        ("POST", "/fhir/DiagnosticReport", b'{"resourceType": "DiagnosticReport"}', 400,
         "required"),
    ],
)
def test_fhir_errors_are_operation_outcomes(sandbox: Sandbox, method: str, path: str,
                                            body: bytes, status: int, code: str) -> None:
    if method == "GET":
        got, _headers, answer = sandbox.get(path, "application/fhir+json")
    else:
        got, _headers, answer = sandbox.request(method, path, body, "application/fhir+json")
    assert got == status
    doc = json.loads(answer)
    assert doc["resourceType"] == "OperationOutcome" and doc["issue"][0]["code"] == code
    assert sandbox.get("/fhir/metadata")[0] == 200


def test_fhir_metadata_and_echo(config: Path, sandbox: Sandbox) -> None:
    status, _, body = sandbox.get("/fhir/metadata", "application/fhir+json")
    doc = json.loads(body)
    assert status == 200 and doc["resourceType"] == "CapabilityStatement"
    assert {r["type"] for r in doc["rest"][0]["resource"]} == {
        "Patient", "ImagingStudy", "DiagnosticReport"}
    echo = medimg("echo", "ehr", config=config)
    assert echo.code == 0, echo.stderr


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, gray pixels) of an 8-bit grayscale PNG (all five filter types)."""
    import struct
    import zlib

    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
            assert body[8:10] == b"\x08\x00", "8-bit grayscale expected"
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    rows, previous = [], bytes(width)
    for y in range(height):
        kind_of_filter = raw[y * (width + 1)]
        line = bytearray(raw[y * (width + 1) + 1 : (y + 1) * (width + 1)])
        for x in range(width):
            a = line[x - 1] if x else 0
            b = previous[x]
            c = previous[x - 1] if x else 0
            if kind_of_filter == 1:
                line[x] = (line[x] + a) & 255
            elif kind_of_filter == 2:
                line[x] = (line[x] + b) & 255
            elif kind_of_filter == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind_of_filter == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = bytes(line)
    return width, height, b"".join(rows)


def test_rendered_png_is_orthancs_and_jpeg_decodes(sandbox: Sandbox, orthanc: Orthanc,
                                                    dicom_data: Manifest, tmp_path: Path) -> None:
    import urllib.request

    import pydicom
    from peers import run_dcmtk

    inst = next(i for i in dicom_data.instances if i.rows == 16)
    path = (f"/dicom-web/studies/{inst.study_uid}/series/{inst.series_uid}/instances/"
            f"{inst.sop_instance_uid}/rendered")

    def rendered(peer: Sandbox | Orthanc, accept: str) -> tuple[str, bytes]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(f"{peer.http_url}{path}", headers={"Accept": accept})
        with opener.open(req, timeout=30) as resp:
            return resp.headers["Content-Type"], resp.read()

    kind, ours = rendered(sandbox, "image/png")
    assert kind == "image/png"
    _, theirs = rendered(orthanc, "image/png")
    assert decode_png(ours) == decode_png(theirs)  # same windowing, same pixels
    kind, jpeg = rendered(sandbox, "image/jpeg")
    assert kind == "image/jpeg" and jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
    # DCMTK (libijg) decodes it to nearly the same pixels (quality 90)
    (tmp_path / "r.jpg").write_bytes(jpeg)
    assert run_dcmtk(["img2dcm", str(tmp_path / "r.jpg"), str(tmp_path / "r.dcm")]
                     ).returncode == 0
    assert run_dcmtk(["dcmdjpeg", str(tmp_path / "r.dcm"), str(tmp_path / "d.dcm")]
                     ).returncode == 0
    decoded = bytes(pydicom.dcmread(tmp_path / "d.dcm").PixelData)
    _, _, png_pixels = decode_png(ours)
    assert len(decoded) == len(png_pixels) == inst.rows * inst.columns
    assert sum(abs(a - b) for a, b in zip(decoded, png_pixels, strict=True)) / len(decoded) < 8


# --------------------------------------------------------------------------
# The console lines: PHI redacted unless --no-redact


def _queries_by_name_and_id(config: Path) -> None:
    """A DICOMweb find by name, a C-FIND by ID, FHIR searches by name and patient, a read."""
    for args in (("find", "web", "--name", "Müller*"), ("find", "dimse", "--patient-id", "PAT004"),
                 ("fhir", "patient", "ehr", "--name", "müller"),
                 ("fhir", "studies", "ehr", "--patient", "PAT003"),
                 ("fhir", "patient", "ehr", "PAT005")):
        result = medimg(*args, config=config)
        assert result.code in (0, 4, 5), result.stderr  # an empty sandbox has no PAT005


def _log_after(peer: Sandbox, offset: int, wanted: str, count: int) -> str:
    """The sandbox's stdout after `offset`, once `count` lines containing `wanted` are in."""
    deadline = time.monotonic() + 10
    while True:
        text = peer.log_path.read_bytes()[offset:].decode("utf-8", "replace")
        if text.count(wanted) >= count or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


QUERIED = ("müller", "m%c3%bc", "pat003", "pat004", "pat005")


def test_console_lines_hash_the_patient_data_of_queries(config: Path,
                                                       sandbox: Sandbox) -> None:
    offset = sandbox.log_path.stat().st_size
    _queries_by_name_and_id(config)
    log = _log_after(sandbox, offset, "GET /fhir/", 3)
    assert "GET /dicom-web/studies?" in log and "C-FIND STUDY" in log
    assert "GET /fhir/Patient?name=<PHI:" in log and "GET /fhir/Patient/<PHI:" in log
    assert "GET /fhir/ImagingStudy?patient=<PHI:" in log
    assert [value for value in QUERIED if value in log.lower()] == []


def test_console_lines_keep_the_patient_data_with_no_redact(
        tmp_path: Path, fresh_sandbox: Callable[..., Sandbox]) -> None:
    peer = fresh_sandbox(extra_args=["--no-redact"])
    config = write_config(tmp_path / "nr.toml", peer.profile_toml("dimse"),
                          peer.dicomweb_profile_toml("web"), peer.fhir_profile_toml("ehr"))
    _queries_by_name_and_id(config)
    log = _log_after(peer, 0, "GET /fhir/", 3)
    assert "<PHI:" not in log
    assert "GET /fhir/Patient?name=müller" in log and "GET /fhir/Patient/PAT005" in log
    assert "PatientName=Müller*" in log and "patient=PAT003" in log
