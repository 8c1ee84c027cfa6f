"""A real FHIR R4 server for the tests: sekmet-fhir (PyPI) on a free loopback port.

sekmet lives in its own virtual environment (``.venv-peers/``, made by
``scripts/ensure-peers.sh``) so that its dependencies (FastAPI, uvicorn,
fhir.resources ...) never mix with medimg's. ``$MEDIMG_SEKMET`` names another
``sekmet`` program to use.

The server runs with its simulator off and SMART JWT access tokens required:
sekmet verifies them with an HS256 secret kept in its database (``kv`` table,
key ``jwt_secret``), which :meth:`FhirServer.start` writes before starting it,
so the tests mint their own tokens (:meth:`FhirServer.token`): no token -> 401,
a token whose scope lacks write -> 403 on create.

:func:`seed_bundle` makes the transaction Bundle the session server is loaded
with: the patients of ``dicom_data`` (Müller^Jürgen, 山田^太郎 among them), an
ImagingStudy per generated DICOM study (identifier ``urn:dicom:uid`` = its
StudyInstanceUID, so ``fhir studies --format uids`` feeds ``wadoget`` against
the session Orthanc), extra studies, patients for paging, one DiagnosticReport.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import pytest
from dicom_data import Manifest
from peers import LOOPBACK, Peer, _profile_toml, free_port, in_ci

REPO = Path(__file__).resolve().parent.parent
PEERS_VENV = REPO / ".venv-peers"

MRN_SYSTEM = "http://hospital.example.org/mrn"
DICOM_UID = "urn:dicom:uid"
LOINC = "http://loinc.org"
READ_SCOPE = "system/*.read"
WRITE_SCOPE = "system/*.read system/*.write"
PAGING_FAMILY = "Pagewalker"
PAGING_COUNT = 7
REPORT_ID = "dr-seed-1"
ORGANIZATION_ID = "org-1"
REPORT_CONCLUSION = "No acute findings. Keine akuten Befunde."


def _missing(message: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{message}; under CI=true a missing peer is a failure", pytrace=False)
    pytest.skip(message)


def sekmet_program() -> str:
    """The `sekmet` program: $MEDIMG_SEKMET, .venv-peers/bin/sekmet, or on PATH."""
    for candidate in (os.environ.get("MEDIMG_SEKMET"), str(PEERS_VENV / "bin" / "sekmet"),
                      shutil.which("sekmet")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    _missing("sekmet-fhir (the test FHIR server) not found: run scripts/ensure-peers.sh "
             "(installs it into .venv-peers/)")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_jwt(secret: str, claims: dict[str, Any]) -> str:
    """A JWT signed with HMAC-SHA256 (RFC 7519 / 7515), as sekmet verifies them."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


class FhirServer(Peer):
    """sekmet-fhir serving FHIR R4 at ``url`` (``http://127.0.0.1:PORT/fhir``)."""

    name: ClassVar[str] = "sekmet"

    def __init__(self, workdir: Path, port: int, secret: str) -> None:
        super().__init__(workdir, port, "-", f"http://{LOOPBACK}:{port}")
        self.url = f"http://{LOOPBACK}:{port}/fhir"
        self.secret = secret
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def start(cls, workdir: Path, *, secret: str = "medimg-test-hs256-secret",
              timeout: float = 60.0) -> FhirServer:
        """Start sekmet in ``workdir`` and wait until ``/fhir/metadata`` answers."""
        program = sekmet_program()
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server = cls(workdir, port, secret)
        data = workdir / "data"
        data.mkdir(exist_ok=True)
        settings = {
            "base_url": server.url,
            "host": LOOPBACK,
            "port": port,
            "data_dir": str(data),
            "simulator": {"enabled": False},
            "server_auth": {"types": ["smart"], "enforce_scopes": True},
            "validation": {"inbound": "strict"},
            "log_inbound": False,
        }
        config = workdir / "settings.yaml"
        config.write_text(json.dumps(settings, indent=2), encoding="utf-8")  # JSON is YAML
        # the HS256 secret sekmet verifies access tokens with (created here, before it does)
        with sqlite3.connect(data / "sekmet.db") as db:
            db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)")
            db.execute("INSERT OR REPLACE INTO kv(k, v) VALUES ('jwt_secret', ?)", (secret,))
        db.close()
        started = time.monotonic()
        server._spawn([program, "serve", "--config", str(config), "--host", LOOPBACK,
                       "--port", str(port)])
        try:
            server._wait_ready(server._metadata_answers, timeout, "answer on /fhir/metadata")
        except BaseException:
            server.stop(graceful=False)
            raise
        server.started_seconds = time.monotonic() - started
        return server

    def _metadata_answers(self) -> bool:
        try:
            with self._opener.open(f"{self.url}/metadata", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def token(self, scope: str = READ_SCOPE, *, lifetime: int = 3600, **claims: Any) -> str:
        """An access token sekmet accepts (audience = its base URL)."""
        now = int(time.time())
        body = {"iss": "medimg-tests", "aud": self.url, "sub": "medimg-tests",
                "client_id": "medimg-tests", "scope": scope, "iat": now, "exp": now + lifetime,
                **claims}
        return hs256_jwt(self.secret, body)

    def http(self, method: str, path: str, body: Any = None, *,
             scope: str = WRITE_SCOPE) -> tuple[int, Any]:
        """A request with a token of ``scope``; (status, JSON body)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.url}/{path.lstrip('/')}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.token(scope)}",
                     "Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
        try:
            with self._opener.open(req, timeout=30) as response:
                return int(response.status), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:  # an HTTPError holds the response's socket open until closed
                return int(exc.code), json.loads(exc.read() or b"null")

    def load_bundle(self, bundle: dict[str, Any]) -> None:
        status, answer = self.http("POST", "", bundle)
        if status != 200:
            raise RuntimeError(f"sekmet refused the seed transaction: HTTP {status} {answer}")

    def profile_toml(self, name: str, **overrides: Any) -> str:
        """A fhir profile with bearer auth from ``$FHIR_TOKEN`` (override ``token_env``)."""
        base: dict[str, Any] = {"type": "fhir", "url": self.url, "auth": "bearer",
                                "token_env": "FHIR_TOKEN", "timeout": 15}
        return _profile_toml(name, base, overrides)


# --------------------------------------------------------------------------
# Test data


@dataclass(frozen=True)
class ExtraStudy:
    id: str
    status: str
    started: str
    uid: str | None  # identifier value as stored (with or without urn:oid:)


# pat001's studies beyond its two DICOM ones: other statuses, dates, UID spellings.
EXTRA_STUDIES = (
    ExtraStudy("is-extra-registered", "registered", "2023-05-01T09:00:00Z",
               "urn:oid:2.25.900000000000000000000000000000000001"),
    ExtraStudy("is-extra-cancelled", "cancelled", "2022-03-03T10:00:00Z", None),
    ExtraStudy("is-extra-newest", "available", "2025-02-02T08:00:00Z",
               "2.25.900000000000000000000000000000000003"),
)


def patient_fhir_id(patient_id: str) -> str:
    return patient_id.lower()  # PAT004 -> pat004


def study_fhir_id(accession: str) -> str:
    return f"is-{accession.lower()}"  # ACC0007 -> is-acc0007


def _gender(sex: str) -> str:
    return {"M": "male", "F": "female"}.get(sex, "other")


def _date(yyyymmdd: str) -> str:
    return f"{yyyymmdd[:4]}-{yyyymmdd[4:6]}-{yyyymmdd[6:]}"


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    ref = f"{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": ref, "resource": resource, "request": {"method": "PUT", "url": ref}}


def seed_bundle(data: Manifest) -> dict[str, Any]:
    """The transaction Bundle the session FHIR server is loaded with."""
    entries = []
    for p in data.patients:
        family, _, given = p.name.partition("^")
        entries.append(_put({
            "resourceType": "Patient", "id": patient_fhir_id(p.patient_id),
            "identifier": [{"use": "usual", "system": MRN_SYSTEM, "value": p.patient_id,
                            "type": {"coding": [{
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "MR"}]}}],
            "name": [{"use": "official", "family": family, "given": given.split()}],
            "gender": _gender(p.sex), "birthDate": _date(p.birth_date),
        }))
    for n in range(1, PAGING_COUNT + 1):
        entries.append(_put({
            "resourceType": "Patient", "id": f"pager-{n}",
            "identifier": [{"system": MRN_SYSTEM, "value": f"PAGE{n:03d}"}],
            "name": [{"family": PAGING_FAMILY, "given": [f"Nummer{n}"]}],
            "gender": "unknown", "birthDate": f"2000-01-{n:02d}",
        }))
    for s in data.studies:
        series = data.series_of(s.study_uid)
        entries.append(_put({
            "resourceType": "ImagingStudy", "id": study_fhir_id(s.accession_number),
            "identifier": [{"system": DICOM_UID, "value": f"urn:oid:{s.study_uid}"},
                           {"type": {"coding": [{
                               "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                               "code": "ACSN"}]}, "value": s.accession_number}],
            "status": "available",
            "subject": {"reference": f"Patient/{patient_fhir_id(s.patient_id)}"},
            "started": f"{_date(s.study_date)}T{s.study_time[:2]}:{s.study_time[2:4]}:"
                       f"{s.study_time[4:6]}Z",
            "numberOfSeries": len(series),
            "numberOfInstances": len(data.instances_of_study(s.study_uid)),
            "description": s.description,
            "series": [{"uid": se.series_uid, "number": se.series_number,
                        "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                                     "code": se.modality}} for se in series],
        }))
    for extra in EXTRA_STUDIES:
        study: dict[str, Any] = {
            "resourceType": "ImagingStudy", "id": extra.id, "status": extra.status,
            "subject": {"reference": "Patient/pat001"}, "started": extra.started,
            "description": f"EXTRA {extra.status.upper()}",
        }
        if extra.uid:
            study["identifier"] = [{"system": DICOM_UID, "value": extra.uid}]
        entries.append(_put(study))
    entries.append(_put({"resourceType": "Organization", "id": ORGANIZATION_ID,
                         "name": "MEDIMG TEST HOSPITAL"}))
    first = data.studies_of("PAT001")[0]
    entries.append(_put({
        "resourceType": "DiagnosticReport", "id": REPORT_ID, "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "18748-4",
                             "display": "Diagnostic imaging study"}]},
        "subject": {"reference": "Patient/pat001"},
        "imagingStudy": [{"reference": f"ImagingStudy/{study_fhir_id(first.accession_number)}"}],
        "issued": "2024-01-16T12:00:00Z", "conclusion": REPORT_CONCLUSION,
    }))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def start_loaded(workdir: Path, data: Manifest, **start: Any) -> FhirServer:
    """A server started (``FhirServer.start(**start)``) and loaded with :func:`seed_bundle`."""
    server = FhirServer.start(workdir, **start)
    try:
        server.load_bundle(seed_bundle(data))
    except BaseException:
        server.stop(graceful=False)
        raise
    return server
