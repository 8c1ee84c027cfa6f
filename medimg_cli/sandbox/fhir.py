"""FHIR R4 for the sandbox: Patient and ImagingStudy derived from the stored DICOM,
DiagnosticReport create/read (kept in sqlite), searchset Bundles with paging.

- ``GET metadata``: the CapabilityStatement.
- ``GET Patient/{id}``, ``GET Patient?identifier=&name=&family=&given=&birthdate=&gender=``.
  A Patient's id is its DICOM PatientID when that is a valid FHIR id, else
  ``p-`` and a hash; its identifier has the system ``urn:medimg:sandbox:patient-id``.
- ``GET ImagingStudy/{id}`` (the id is the Study Instance UID),
  ``GET ImagingStudy?patient=&subject=&identifier=&status=&started=&modality=&_sort=
  &_include=ImagingStudy:patient``; identifier ``urn:dicom:uid|urn:oid:UID``.
- ``POST DiagnosticReport``, ``GET DiagnosticReport/{id}``,
  ``GET DiagnosticReport?patient=&subject=&status=``.
- ``_count`` and ``_offset`` page every search; ``next`` links carry them.
- Errors are OperationOutcomes: 404 unknown type or id, 400 bad parameters or body.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode

from medimg_cli.sandbox.store import Archive, first, text

FHIR_JSON = "application/fhir+json; charset=utf-8"
PATIENT_SYSTEM = "urn:medimg:sandbox:patient-id"
DICOM_UID = "urn:dicom:uid"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
DEFAULT_COUNT = 50
MAX_COUNT = 1000
_COMMON = frozenset({"_count", "_offset", "_format", "_pretty", "_summary", "_elements"})

Answer = tuple[int, bytes, str, dict[str, str]]


class FhirError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def outcome(code: str, message: str, severity: str = "error") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": message}]}


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> Answer:
    return (status, json.dumps(doc, ensure_ascii=False).encode("utf-8"), FHIR_JSON,
            headers or {})


# --------------------------------------------------------------------------
# DICOM -> FHIR


def patient_id_to_fhir(patient_id: str) -> str:
    if _ID.match(patient_id):
        return patient_id
    return "p-" + hashlib.sha1(patient_id.encode("utf-8")).hexdigest()[:20]


def _date(value: str) -> str | None:
    value = value.strip()
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return None


def _datetime(date: str, time: str) -> str | None:
    day = _date(date)
    if day is None:
        return None
    digits = re.sub(r"[^0-9]", "", time.split(".")[0])
    if len(digits) < 4:
        return day
    digits = digits.ljust(6, "0")[:6]
    return f"{day}T{digits[:2]}:{digits[2:4]}:{digits[4:6]}Z"


def human_name(record: dict[str, Any]) -> list[dict[str, Any]]:
    element = (record.get("00100010") or {}).get("Value") or []
    names = []
    for value in element:
        if not isinstance(value, dict):
            continue
        for group in ("Alphabetic", "Ideographic"):
            pn = value.get(group)
            if not pn:
                continue
            parts = (pn.split("^") + [""] * 5)[:5]
            name: dict[str, Any] = {"use": "official", "text": " ".join(
                p for p in (parts[3], parts[1], parts[2], parts[0], parts[4]) if p)}
            if parts[0]:
                name["family"] = parts[0]
            given = [p for p in (parts[1], parts[2]) if p]
            if given:
                name["given"] = given
            if parts[3]:
                name["prefix"] = [parts[3]]
            if parts[4]:
                name["suffix"] = [parts[4]]
            names.append(name)
    return names


def patient_resource(patient_id: str, record: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_id_to_fhir(patient_id),
        "identifier": [{
            "use": "usual",
            "type": {"coding": [{"system": V2_0203, "code": "MR"}], "text": "Patient ID"},
            "system": PATIENT_SYSTEM, "value": patient_id}],
        "active": True,
    }
    names = human_name(record)
    if names:
        resource["name"] = names
    sex = text(record, "00100040").upper()
    resource["gender"] = {"M": "male", "F": "female", "O": "other"}.get(sex, "unknown")
    birth = _date(text(record, "00100030"))
    if birth:
        resource["birthDate"] = birth
    return resource


def _display(record: dict[str, Any]) -> str:
    names = human_name(record)
    return str(names[0]["text"]) if names else text(record, "00100020")


class _Index:
    """What FHIR needs from the archive, read once per request."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._patients: dict[str, tuple[str, dict[str, Any]]] | None = None

    def patients(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """FHIR id -> (DICOM PatientID, header JSON)."""
        if self._patients is None:
            self._patients = {}
            for pid, blob in self.archive.query(
                    "SELECT patient_id, json FROM patients ORDER BY rowid"):
                self._patients[patient_id_to_fhir(pid)] = (pid, json.loads(blob))
        return self._patients

    def imaging_study(self, study_uid: str, patient_id: str, record: dict[str, Any]
                      ) -> dict[str, Any]:
        series_rows = self.archive.query(
            "SELECT series_uid, json FROM series WHERE study_uid = ? ORDER BY rowid", (study_uid,))
        instances: dict[str, list[tuple[str, str, Any]]] = {}
        for series_uid, sop_uid, sop_class, number in self.archive.query(
                "SELECT series_uid, sop_uid, sop_class, number FROM instances "
                "WHERE study_uid = ? ORDER BY series_uid, number, sop_uid", (study_uid,)):
            instances.setdefault(series_uid, []).append((sop_uid, sop_class, number))
        series = []
        modalities: list[str] = []
        for series_uid, blob in series_rows:
            srec = json.loads(blob)
            modality = text(srec, "00080060")
            if modality and modality not in modalities:
                modalities.append(modality)
            item: dict[str, Any] = {"uid": series_uid}
            number = first(srec, "00200011")
            if isinstance(number, (int, float)):
                item["number"] = int(number)
            item["modality"] = {"system": DCM, "code": modality or "OT"}
            if text(srec, "0008103E"):
                item["description"] = text(srec, "0008103E")
            members = instances.get(series_uid, [])
            item["numberOfInstances"] = len(members)
            item["instance"] = [
                {"uid": sop, "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{cls}"},
                 **({"number": int(num)} if isinstance(num, (int, float)) else {})}
                for sop, cls, num in members]
            series.append(item)
        resource: dict[str, Any] = {
            "resourceType": "ImagingStudy",
            "id": study_uid,
            "identifier": [{"use": "official", "system": DICOM_UID,
                            "value": f"urn:oid:{study_uid}"}],
            "status": "available",
            "subject": {"reference": f"Patient/{patient_id_to_fhir(patient_id)}",
                        "display": _display(record)},
        }
        accession = text(record, "00080050")
        if accession:
            resource["identifier"].append({
                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                "value": accession})
        if modalities:
            resource["modality"] = [{"system": DCM, "code": m} for m in modalities]
        started = _datetime(text(record, "00080020"), text(record, "00080030"))
        if started:
            resource["started"] = started
        referring = first(record, "00080090")
        if referring:
            resource["referrer"] = {"display": str(referring).replace("^", " ").strip()}
        resource["numberOfSeries"] = len(series)
        resource["numberOfInstances"] = sum(s["numberOfInstances"] for s in series)
        if text(record, "00081030"):
            resource["description"] = text(record, "00081030")
        resource["series"] = series
        return resource


# --------------------------------------------------------------------------
# Search helpers


def _token(value: str) -> tuple[str | None, str]:
    """``system|code`` -> (system, code); ``code`` -> (None, code)."""
    if "|" in value:
        system, _, code = value.partition("|")
        return system, code
    return None, value


def _prefixed_date(value: str) -> tuple[str, str]:
    match = re.fullmatch(r"(eq|ne|gt|lt|ge|le|sa|eb|ap)?(\d{4}(-\d{2}(-\d{2})?)?)(T.*)?", value)
    if not match:
        raise FhirError(400, "invalid", f"'{value}' is not a FHIR date (e.g. 2024-01-31, "
                        "ge2024-01-01)")
    return match.group(1) or "eq", match.group(2)


def _date_matches(value: str | None, query: str) -> bool:
    if not value:
        return False
    prefix, day = _prefixed_date(query)
    have = value[: len(day)]
    return {"eq": have == day, "ne": have != day, "gt": have > day, "lt": have < day,
            "ge": have >= day, "le": have <= day, "sa": have > day, "eb": have < day,
            "ap": have == day}[prefix]


def _name_matches(resource: dict[str, Any], value: str, part: str) -> bool:
    wanted = value.casefold()
    for name in resource.get("name") or []:
        if part == "family":
            candidates = [name.get("family", "")]
        elif part == "given":
            candidates = list(name.get("given", []))
        else:
            candidates = [name.get("family", ""), *name.get("given", []), name.get("text", "")]
        if any(str(c).casefold().startswith(wanted) for c in candidates if c):
            return True
    return False


def _paged(resources: list[dict[str, Any]], params: list[tuple[str, str]], base: str,
           rtype: str, included: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
           | None = None) -> Answer:
    count, offset = DEFAULT_COUNT, 0
    for key, value in params:
        if key in ("_count", "_offset"):
            if not value.isdigit():
                raise FhirError(400, "invalid", f"{key} must be a non-negative integer")
            if key == "_count":
                count = min(int(value), MAX_COUNT)
            else:
                offset = int(value)
    page = resources[offset : offset + count] if count else []
    kept = [(k, v) for k, v in params if k not in ("_count", "_offset")]

    def link(at: int) -> str:
        return f"{base}/{rtype}?" + urlencode([*kept, ("_count", str(count)),
                                               ("_offset", str(at))])

    links = [{"relation": "self", "url": link(offset)}]
    if count and offset + count < len(resources):
        links.append({"relation": "next", "url": link(offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": link(max(0, offset - count))})
    entries = [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r,
                "search": {"mode": "match"}} for r in page]
    if included is not None:
        entries += [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r,
                     "search": {"mode": "include"}} for r in included(page)]
    bundle = {"resourceType": "Bundle", "id": uuid.uuid4().hex, "type": "searchset",
              "total": len(resources), "link": links, "entry": entries}
    return _json(200, bundle)


def _check_params(params: Sequence[tuple[str, str]], allowed: set[str], rtype: str) -> None:
    for key, _ in params:
        name = key.split(":")[0]
        if name not in allowed and name not in _COMMON:
            raise FhirError(400, "not-supported",
                            f"unknown search parameter '{key}' for {rtype}; this server knows "
                            + ", ".join(sorted(allowed | _COMMON)))


# --------------------------------------------------------------------------
# Resources


def _patients(index: _Index, params: list[tuple[str, str]], base: str) -> Answer:
    _check_params(params, {"_id", "identifier", "name", "family", "given", "birthdate",
                           "gender"}, "Patient")
    found = []
    for fid, (pid, record) in index.patients().items():
        resource = patient_resource(pid, record)
        ok = True
        for key, value in params:
            name, _, modifier = key.partition(":")
            if name == "_id":
                ok = fid in value.split(",")
            elif name == "identifier":
                system, code = _token(value)
                ok = code == pid and system in (None, "", PATIENT_SYSTEM)
            elif name in ("name", "family", "given"):
                ok = (any(str(n.get("text", "")).casefold() == value.casefold()
                          for n in resource.get("name", [])) if modifier == "exact"
                      else _name_matches(resource, value, name))
            elif name == "birthdate":
                ok = _date_matches(resource.get("birthDate"), value)
            elif name == "gender":
                ok = resource["gender"] in value.split(",")
            if not ok:
                break
        if ok:
            found.append(resource)
    return _paged(found, params, base, "Patient")


def _studies(index: _Index, params: list[tuple[str, str]], base: str) -> Answer:
    _check_params(params, {"_id", "patient", "subject", "identifier", "status", "started",
                           "modality", "_sort", "_include"}, "ImagingStudy")
    archive = index.archive
    rows = archive.query("SELECT study_uid, patient_id, json FROM studies ORDER BY rowid")
    found = []
    for study_uid, patient_id, blob in rows:
        record = json.loads(blob)
        fid = patient_id_to_fhir(patient_id)
        ok = True
        for key, value in params:
            if key in ("patient", "subject"):
                ref = value.split("/")[-1] if value.startswith(("Patient/", "http")) else value
                ok = ref == fid
            elif key == "_id":
                ok = study_uid in value.split(",")
            elif key == "identifier":
                system, code = _token(value)
                ok = (code.removeprefix("urn:oid:") == study_uid and system in
                      (None, "", DICOM_UID)) or (system in (None, "")
                                                 and code == text(record, "00080050"))
            elif key == "status":
                ok = "available" in value.split(",")
            elif key == "started":
                ok = _date_matches(_date(text(record, "00080020")), value)
            elif key == "modality":
                wanted = {_token(v)[1] for v in value.split(",")}
                have = {r[0] for r in archive.query(
                    "SELECT DISTINCT modality FROM series WHERE study_uid = ?", (study_uid,))}
                ok = bool(wanted & have)
            if not ok:
                break
        if ok:
            found.append(index.imaging_study(study_uid, patient_id, record))
    for key, value in params:
        if key == "_sort":
            for field in reversed(value.split(",")):
                descending = field.startswith("-")
                name = field.lstrip("-")
                if name not in ("started", "_id"):
                    raise FhirError(400, "not-supported", f"cannot sort by '{name}' (started, "
                                    "_id)")
                attr = "started" if name == "started" else "id"

                def sort_key(r: dict[str, Any], a: str = attr) -> str:
                    return str(r.get(a, ""))

                found.sort(key=sort_key, reverse=descending)
    include = any(k == "_include" and v in ("ImagingStudy:patient", "ImagingStudy:subject")
                  for k, v in params)

    def patients_of(page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not include:
            return []
        wanted = []
        for r in page:
            fid = r["subject"]["reference"].split("/")[-1]
            if fid not in wanted:
                wanted.append(fid)
        known = index.patients()
        return [patient_resource(*known[f]) for f in wanted if f in known]

    return _paged(found, params, base, "ImagingStudy", patients_of)


def _reports(archive: Archive, params: list[tuple[str, str]], base: str) -> Answer:
    _check_params(params, {"_id", "patient", "subject", "status"}, "DiagnosticReport")
    found = []
    for report in archive.reports():
        ok = True
        for key, value in params:
            if key in ("patient", "subject"):
                ref = str((report.get("subject") or {}).get("reference", ""))
                ok = ref.split("/")[-1] == value.split("/")[-1]
            elif key == "status":
                ok = report.get("status") in value.split(",")
            elif key == "_id":
                ok = report.get("id") in value.split(",")
            if not ok:
                break
        if ok:
            found.append(report)
    return _paged(found, params, base, "DiagnosticReport")


_REPORT_STATUS = frozenset({"registered", "partial", "preliminary", "final", "amended",
                            "corrected", "appended", "cancelled", "entered-in-error", "unknown"})


def _create_report(archive: Archive, body: bytes, base: str) -> Answer:
    try:
        resource = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FhirError(400, "structure", f"the body is not JSON: {exc}") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "DiagnosticReport":
        raise FhirError(400, "invalid", "POST DiagnosticReport takes a DiagnosticReport")
    if resource.get("status") not in _REPORT_STATUS:
        raise FhirError(400, "required", "DiagnosticReport.status is missing or not one of "
                        + ", ".join(sorted(_REPORT_STATUS)))
    if not isinstance(resource.get("code"), dict):
        raise FhirError(400, "required", "DiagnosticReport.code is missing")
    report_id = uuid.uuid4().hex
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    resource["id"] = report_id
    resource["meta"] = {**(resource.get("meta") or {}), "versionId": "1", "lastUpdated": now}
    archive.put_report(report_id, now, resource)
    location = f"{base}/DiagnosticReport/{report_id}/_history/1"
    return _json(201, resource, {"Location": location, "ETag": 'W/"1"'})


def capability_statement(base: str) -> dict[str, Any]:
    def search(*names: str) -> list[dict[str, str]]:
        types = {"identifier": "token", "birthdate": "date", "gender": "token",
                 "started": "date", "status": "token", "modality": "token",
                 "patient": "reference", "subject": "reference", "_id": "token"}
        return [{"name": n, "type": types.get(n, "string")} for n in names]

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {"name": "medimg sandbox"},
        "implementation": {"description": "medimg sandbox FHIR R4", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "resource": [
                {"type": "Patient", "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "searchParam": search("_id", "identifier", "name", "family", "given",
                                       "birthdate", "gender")},
                {"type": "ImagingStudy",
                 "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "searchInclude": ["ImagingStudy:patient"],
                 "searchParam": search("_id", "patient", "subject", "identifier", "status",
                                       "started", "modality")},
                {"type": "DiagnosticReport",
                 "interaction": [{"code": "read"}, {"code": "search-type"},
                                 {"code": "create"}],
                 "searchParam": search("_id", "patient", "subject", "status")},
            ],
        }],
    }


def handle(archive: Archive, method: str, path: str, query: str, body: bytes, base: str,
           headers: Any) -> Answer:
    """Answer one FHIR request: (status, body, content type, extra headers)."""
    try:
        return _handle(archive, method, path, query, body, base)
    except FhirError as exc:
        return _json(exc.status, outcome(exc.code, exc.message))


def _handle(archive: Archive, method: str, path: str, query: str, body: bytes,
            base: str) -> Answer:
    parts = [p for p in path.split("/") if p]
    try:
        params = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise FhirError(400, "invalid", f"the query string '{query}' is not valid") from None
    params = [(k, v) for k, v in params if k not in ("_format", "_pretty")]
    index = _Index(archive)
    if parts == ["metadata"] and method == "GET":
        return _json(200, capability_statement(base))
    if not parts:
        raise FhirError(404, "not-found", "this is the FHIR base; try metadata, Patient, "
                        "ImagingStudy or DiagnosticReport")
    rtype = parts[0]
    if rtype not in ("Patient", "ImagingStudy", "DiagnosticReport"):
        raise FhirError(404, "not-supported", f"resource type '{rtype}' is not served here "
                        "(Patient, ImagingStudy, DiagnosticReport)")
    if method == "POST" and len(parts) == 1:
        if rtype != "DiagnosticReport":
            raise FhirError(405, "not-supported", f"{rtype} is read-only here (derived from "
                            "the DICOM data)")
        return _create_report(archive, body, base)
    if method != "GET":
        raise FhirError(405, "not-supported", f"{method} {path} is not supported")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] == "_search"):
        if rtype == "Patient":
            return _patients(index, params, base)
        if rtype == "ImagingStudy":
            return _studies(index, params, base)
        return _reports(archive, params, base)
    if len(parts) == 2:
        rid = parts[1]
        if not _ID.match(rid):
            raise FhirError(400, "invalid", f"'{rid}' is not a valid FHIR id")
        resource = _read(index, rtype, rid)
        if resource is None:
            raise FhirError(404, "not-found", f"{rtype}/{rid} is not known")
        return _json(200, resource)
    raise FhirError(404, "not-found", f"nothing at {path}")


def _read(index: _Index, rtype: str, rid: str) -> dict[str, Any] | None:
    if rtype == "Patient":
        known = index.patients().get(rid)
        return patient_resource(*known) if known else None
    if rtype == "ImagingStudy":
        rows = index.archive.query(
            "SELECT patient_id, json FROM studies WHERE study_uid = ?", (rid,))
        if not rows:
            return None
        return index.imaging_study(rid, rows[0][0], json.loads(rows[0][1]))
    return index.archive.report(rid)
