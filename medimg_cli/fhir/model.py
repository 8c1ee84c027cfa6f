"""FHIR data types as text for tables and CSV: HumanName, Identifier, CodeableConcept, Reference.

Also the table columns per resource type, and the DICOM Study Instance UIDs
of an ImagingStudy (`identifier` with system `urn:dicom:uid`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

DICOM_UID_SYSTEM = "urn:dicom:uid"

Resource = dict[str, Any]
# included resources by "TYPE/ID", to show a reference by name
Included = Mapping[str, Resource]
Column = tuple[str, Callable[[Resource, Included], str]]


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def human_name(names: Any) -> str:
    """The official (else usual, else first) name as `FAMILY, Given Given` (or its text)."""
    candidates = [n for n in _list(names) if isinstance(n, dict)]
    if not candidates:
        return ""
    by_use = {n.get("use"): n for n in reversed(candidates)}
    name = by_use.get("official") or by_use.get("usual") or candidates[0]
    family = str(name.get("family") or "")
    given = " ".join(str(g) for g in _list(name.get("given")))
    if family and given:
        return f"{family}, {given}"
    return family or given or str(name.get("text") or "")


def coding(value: Any) -> str:
    """A Coding as its display, else `code` (with the system when there is one)."""
    if not isinstance(value, dict):
        return ""
    if value.get("display"):
        return str(value["display"])
    code = str(value.get("code") or "")
    system = value.get("system")
    return f"{code} ({system})" if code and system else code


def codeable_concept(value: Any) -> str:
    """A CodeableConcept as its text, else its first coding's display or code."""
    if not isinstance(value, dict):
        return ""
    if value.get("text"):
        return str(value["text"])
    for item in _list(value.get("coding")):
        text = coding(item)
        if text:
            return text
    return ""


def identifier(value: Any) -> str:
    """An Identifier as `VALUE (TYPE)`, else `VALUE (SYSTEM)`, else `VALUE`."""
    if not isinstance(value, dict):
        return ""
    text = str(value.get("value") or "")
    label = _type_label(value.get("type")) or str(value.get("system") or "")
    if text and label:
        return f"{text} ({label})"
    return text


def _type_label(concept: Any) -> str:
    """An identifier type's text, display or bare code (`MR`, `ACSN`): short, for a label."""
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for item in _list(concept.get("coding")):
        if isinstance(item, dict) and (item.get("display") or item.get("code")):
            return str(item.get("display") or item.get("code"))
    return ""


def identifiers(values: Any) -> str:
    """All identifiers, `, ` between them (the official one first)."""
    items = [v for v in _list(values) if isinstance(v, dict)]
    items.sort(key=lambda v: 0 if v.get("use") == "official" else 1)
    return ", ".join(t for t in (identifier(v) for v in items) if t)


def reference(value: Any, included: Included = {}) -> str:  # noqa: B006 - read-only
    """A Reference as the name of what it points to (when included), its display, or TYPE/ID."""
    if not isinstance(value, dict):
        return ""
    ref = str(value.get("reference") or "")
    target = included.get(ref) or included.get("/".join(ref.rsplit("/", 2)[-2:]))
    if target is not None:
        label = display_name(target)
        if label:
            return label
    return str(value.get("display") or ref or identifier(value.get("identifier")))


def display_name(resource: Resource) -> str:
    """What a person calls a resource: a name, a title, a code."""
    name = resource.get("name")
    if isinstance(name, list):
        return human_name(name)
    if isinstance(name, str):
        return name
    for key in ("title", "description"):
        if isinstance(resource.get(key), str):
            return str(resource[key])
    return codeable_concept(resource.get("code"))


def study_uids(study: Resource) -> list[str]:
    """The DICOM Study Instance UIDs of an ImagingStudy (`urn:oid:` prefix removed)."""
    uids = []
    for ident in _list(study.get("identifier")):
        if not isinstance(ident, dict) or ident.get("system") != DICOM_UID_SYSTEM:
            continue
        value = str(ident.get("value") or "").strip()
        if value:
            uids.append(value.removeprefix("urn:oid:"))
    return uids


def index_included(resources: Iterable[Resource], into: dict[str, Resource]) -> None:
    """Add resources to a `TYPE/ID` index (for `reference`)."""
    for res in resources:
        if isinstance(res.get("resourceType"), str) and isinstance(res.get("id"), str):
            into[f"{res['resourceType']}/{res['id']}"] = res


def _date(value: Any) -> str:
    return str(value or "")


def _field(key: str) -> Callable[[Resource, Included], str]:
    return lambda r, _inc: str(r.get(key) or "")


def _modalities(study: Resource) -> str:
    # Modality codes are DICOM's own (CT, MR): the system adds nothing to a table cell.
    codes = [str(m.get("code") or m.get("display") or "") if isinstance(m, dict) else ""
             for m in _list(study.get("modality"))]
    for series in _list(study.get("series")):
        if isinstance(series, dict):
            codes.append(str((series.get("modality") or {}).get("code") or ""))
    seen = dict.fromkeys(c for c in codes if c)
    return ",".join(seen)


def _effective(report: Resource, _inc: Included) -> str:
    period = report.get("effectivePeriod")
    start = period.get("start") if isinstance(period, dict) else None
    return _date(report.get("effectiveDateTime") or start or report.get("issued"))


COLUMNS: dict[str, list[Column]] = {
    "Patient": [
        ("ID", _field("id")),
        ("Name", lambda r, _i: human_name(r.get("name"))),
        ("Identifier", lambda r, _i: identifiers(r.get("identifier"))),
        ("Birth date", _field("birthDate")),
        ("Gender", _field("gender")),
    ],
    "ImagingStudy": [
        ("ID", _field("id")),
        ("Patient", lambda r, inc: reference(r.get("subject"), inc)),
        ("Started", _field("started")),
        ("Status", _field("status")),
        ("Modalities", lambda r, _i: _modalities(r)),
        ("Description", _field("description")),
        ("Series", lambda r, _i: str(r.get("numberOfSeries", ""))),
        ("Instances", lambda r, _i: str(r.get("numberOfInstances", ""))),
        ("Study UID", lambda r, _i: ", ".join(study_uids(r))),
    ],
    "DiagnosticReport": [
        ("ID", _field("id")),
        ("Status", _field("status")),
        ("Code", lambda r, _i: codeable_concept(r.get("code"))),
        ("Patient", lambda r, inc: reference(r.get("subject"), inc)),
        ("Date", _effective),
        ("Conclusion", _field("conclusion")),
    ],
}
GENERIC: list[Column] = [
    ("Type", _field("resourceType")),
    ("ID", _field("id")),
    ("Status", _field("status")),
    ("Summary", lambda r, _i: display_name(r)),
    ("Updated", lambda r, _i: str((r.get("meta") or {}).get("lastUpdated") or "")),
]


def columns_for(rtype: str) -> list[Column]:
    """Table/CSV columns for a resource type (a generic set for types without their own)."""
    return COLUMNS.get(rtype, GENERIC)
