"""One protocol-neutral query model.

The command line builds a `Query` from its filters with `build_query`; the
DIMSE layer turns it into C-FIND identifiers (`Query.steps`) and the DICOMweb
layer into QIDO-RS parameters. Results come back in the DICOM JSON model
(PS3.18 F.2) whatever the protocol. Everything here is pure: no network, and
pydicom only for its data dictionary.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from medimg_cli.errors import UsageError

LEVELS = ("patient", "study", "series", "instance")
ROOTS = ("study", "patient")
DIMSE_LEVEL = {"patient": "PATIENT", "study": "STUDY", "series": "SERIES", "instance": "IMAGE"}
UNIQUE_KEY = {
    "patient": "PatientID",
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}

# Keys asked back by default at each level, in table order.
RETURN_KEYS: dict[str, tuple[str, ...]] = {
    "patient": (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ),
    "study": (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "StudyInstanceUID",
    ),
    "series": (
        "StudyInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "SeriesDate",
        "NumberOfSeriesRelatedInstances",
        "SeriesInstanceUID",
    ),
    "instance": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "InstanceNumber",
        "SOPClassUID",
        "SOPInstanceUID",
    ),
}

# The level each attribute belongs to in the Patient Root model (PS3.4 C.6.1).
# In the Study Root model the patient attributes live at study level.
_HOME_LEVEL: dict[str, str] = {
    **dict.fromkeys(
        (
            "PatientName",
            "PatientID",
            "IssuerOfPatientID",
            "OtherPatientIDs",
            "OtherPatientIDsSequence",
            "PatientBirthDate",
            "PatientBirthTime",
            "PatientSex",
            "EthnicGroup",
            "PatientComments",
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedSeries",
            "NumberOfPatientRelatedInstances",
        ),
        "patient",
    ),
    **dict.fromkeys(
        (
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "StudyDescription",
            "ReferringPhysicianName",
            "ModalitiesInStudy",
            "SOPClassesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "PatientAge",
            "PatientSize",
            "PatientWeight",
            "AdmittingDiagnosesDescription",
            "NameOfPhysiciansReadingStudy",
        ),
        "study",
    ),
    **dict.fromkeys(
        (
            "SeriesInstanceUID",
            "Modality",
            "SeriesNumber",
            "SeriesDescription",
            "SeriesDate",
            "SeriesTime",
            "BodyPartExamined",
            "ProtocolName",
            "Laterality",
            "PerformedProcedureStepStartDate",
            "PerformedProcedureStepStartTime",
            "NumberOfSeriesRelatedInstances",
            "InstitutionName",
            "StationName",
        ),
        "series",
    ),
    **dict.fromkeys(
        (
            "SOPInstanceUID",
            "SOPClassUID",
            "InstanceNumber",
            "ContentDate",
            "ContentTime",
            "AcquisitionDate",
            "NumberOfFrames",
            "Rows",
            "Columns",
        ),
        "instance",
    ),
}

# Keys medimg sets itself; -k may not override them.
_RESERVED = {"QueryRetrieveLevel", "SpecificCharacterSet"}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = r"(\d{8}|\d{4}-\d{2}-\d{2})"
_DATE_RANGE = re.compile(rf"^{_DATE}?-{_DATE}?$")
_RELATIVE = re.compile(r"^(\d{1,5})d$")
_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


@dataclass(frozen=True)
class Key:
    """One attribute of a query: its tag, keyword (or hex tag) and VR."""

    tag: int
    keyword: str
    vr: str

    @property
    def hex(self) -> str:
        return f"{self.tag:08X}"


@dataclass(frozen=True)
class Step:
    """One C-FIND identifier to send: level and the (key, value) pairs in it."""

    level: str
    keys: tuple[tuple[Key, str], ...]


@dataclass
class Query:
    """What the user asked for, independent of the protocol that will answer."""

    level: str = "study"
    root: str = "study"
    filters: dict[str, tuple[Key, str]] = field(default_factory=dict)
    extra_keys: list[Key] = field(default_factory=list)
    limit: int | None = None
    fuzzy: bool = False  # QIDO-RS fuzzymatching

    @property
    def chain(self) -> tuple[str, ...]:
        """The levels from the top of the information model down to ours."""
        top = 0 if self.root == "patient" else 1
        return LEVELS[top : LEVELS.index(self.level) + 1]

    def home(self, keyword: str) -> str:
        """The level of the chain an attribute is matched at."""
        level = _HOME_LEVEL.get(keyword, self.level)
        chain = self.chain
        if level not in chain:
            # Patient attributes in the Study Root live at study level; keys of
            # a level below ours are sent at ours and the peer decides.
            return chain[0] if LEVELS.index(level) < LEVELS.index(chain[0]) else self.level
        return level

    def return_keys(self) -> list[Key]:
        """The keys asked back at the query's own level."""
        keys = [lookup_key(k) for k in RETURN_KEYS[self.level]]
        if self.root == "patient" and self.level != "patient":
            keys = [k for k in keys if _HOME_LEVEL.get(k.keyword) != "patient"]
        seen = {k.tag for k in keys}
        for key in self.extra_keys:
            if key.tag not in seen:
                keys.append(key)
                seen.add(key.tag)
        return keys

    def needs_walk(self) -> bool:
        """Whether an upper level must be queried first (PS3.4 hierarchical search).

        A query below the top of the model may only carry, for each level above
        it, a single value of that level's unique key. Anything else (a patient
        name at series level, or no study UID at all) is answered by first
        querying the upper level and then each match's children.
        """
        return any(self.fixed_value(level) is None for level in self.chain[:-1])

    def output_tags(self) -> frozenset[str]:
        """Hex tags of what a match may carry in medimg's output, whatever the protocol.

        The keys asked back, the keys matched on at this level, and the unique
        keys above it: so that C-FIND and QIDO-RS answers for the same data print alike
        (PACS add attributes of their own, e.g. RetrieveAETitle or RetrieveURL).
        """
        tags = {key.hex for key in self.return_keys()}
        tags.update(
            key.hex for kw, (key, _) in self.filters.items() if self.home(kw) == self.level)
        for level in self.chain:
            tags.add(lookup_key(UNIQUE_KEY[level]).hex)
        return frozenset(tags)

    def fixed_value(self, level: str) -> str | None:
        """The single unique key value asked for at `level` when it is all that is asked there."""
        unique = UNIQUE_KEY[level]
        at_level = {kw: v for kw, (_, v) in self.filters.items() if self.home(kw) == level}
        value = at_level.pop(unique, None)
        if at_level or value is None or not _single_value(value):
            return None
        return value

    def step(self, level: str, fixed: dict[str, str] | None = None) -> Step:
        """The identifier for `level`: its filters, the fixed upper unique keys, return keys."""
        fixed = fixed or {}
        pairs: dict[int, tuple[Key, str]] = {}
        for upper, value in fixed.items():
            key = lookup_key(upper)
            pairs[key.tag] = (key, value)
        for keyword, (key, value) in self.filters.items():
            home = self.home(keyword)
            if home == level or (level == self.level and home not in self.chain):
                pairs[key.tag] = (key, value)
        unique = lookup_key(UNIQUE_KEY[level])
        pairs.setdefault(unique.tag, (unique, ""))
        if level == self.level:
            for key in self.return_keys():
                pairs.setdefault(key.tag, (key, ""))
        # Upper unique keys must be present (even empty) in hierarchical queries.
        for upper in self.chain[: self.chain.index(level)]:
            key = lookup_key(UNIQUE_KEY[upper])
            pairs.setdefault(key.tag, (key, ""))
        return Step(level=level, keys=tuple(pairs[t] for t in sorted(pairs)))


def _single_value(value: str) -> bool:
    return bool(value) and not any(c in value for c in "*?\\")


def lookup_key(name: str) -> Key:
    """A DICOM keyword or tag (`PatientName`, `0010,0010`, `00100010`) as a Key."""
    from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

    text = name.strip()
    match = _TAG.match(text)
    if match:
        tag = int(match.group(1) + match.group(2), 16)
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN" if tag >> 16 & 1 == 0 else "LO"
        return Key(tag=tag, keyword=keyword_for_tag(tag) or f"{tag:08X}", vr=vr)
    found = tag_for_keyword(text)
    if found is None:
        raise UsageError(
            f"unknown DICOM keyword '{text}'",
            hint="use a keyword from the DICOM dictionary (e.g. PatientName) or a tag as gggg,eeee",
        )
    return Key(tag=found, keyword=text, vr=dictionary_VR(found))


def parse_date(text: str, *, today: dt.date | None = None, what: str = "--date") -> str:
    """A date or range in medimg's syntax as a DICOM DA match value.

    Accepts `YYYYMMDD`, `YYYY-MM-DD`, ranges `A-B`, `A-`, `-B` of those,
    `today`, `yesterday` and `Nd` (the last N days up to and including today).
    """
    today = today or dt.date.today()
    value = text.strip().lower()
    if value == "today":
        return today.strftime("%Y%m%d")
    if value == "yesterday":
        return (today - dt.timedelta(days=1)).strftime("%Y%m%d")
    relative = _RELATIVE.match(value)
    if relative:
        days = int(relative.group(1))
        if days < 1:
            raise UsageError(f"{what} '{text}': Nd needs N of at least 1")
        start = today - dt.timedelta(days=days - 1)
        return f"{start:%Y%m%d}-{today:%Y%m%d}"
    if re.fullmatch(_DATE, value):
        return _one_date(value, text, what)
    rng = _DATE_RANGE.match(value)
    if rng and (rng.group(1) or rng.group(2)):
        start_s = _one_date(rng.group(1), text, what) if rng.group(1) else ""
        end_s = _one_date(rng.group(2), text, what) if rng.group(2) else ""
        if start_s and end_s and start_s > end_s:
            raise UsageError(f"{what} '{text}': the range ends before it starts")
        return f"{start_s}-{end_s}"
    raise UsageError(
        f"{what} '{text}' is not a date",
        hint="use YYYYMMDD, a range like 20240101-20240131 or 20240101-, "
        "today, yesterday, or Nd for the last N days",
    )


def _one_date(value: str, original: str, what: str) -> str:
    digits = value.replace("-", "")
    try:
        dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise UsageError(f"{what} '{original}': {value} is not a valid calendar date") from None
    return digits


def _uid_list(text: str, what: str) -> str:
    uids = [u.strip() for u in text.replace("\\", ",").split(",") if u.strip()]
    for uid in uids:
        if not _UID.match(uid) or len(uid) > 64:
            raise UsageError(f"{what} '{uid}' is not a DICOM UID (digits and dots, at most 64)")
    return "\\".join(uids)


def parse_key_option(option: str) -> tuple[Key, str]:
    """`-k KEY=VALUE` (or `-k KEY`, `-k KEY=` to ask for the key back)."""
    name, _, value = option.partition("=")
    if not name.strip():
        raise UsageError(f"-k '{option}': expected KEY=VALUE with a keyword or gggg,eeee")
    key = lookup_key(name)
    if key.keyword in _RESERVED:
        raise UsageError(
            f"-k '{option}': medimg sets {key.keyword} itself",
            hint="use --level for the query level; character sets are handled for you",
        )
    if key.vr == "SQ":
        raise UsageError(f"-k '{option}': sequence attributes cannot be matched with -k")
    if value and key.vr == "DA":
        value = parse_date(value, what=f"-k {key.keyword}")
    return key, value


def build_query(
    *,
    level: str = "study",
    root: str = "study",
    patient_id: str | None = None,
    name: str | None = None,
    birthdate: str | None = None,
    date: str | None = None,
    modality: str | None = None,
    accession: str | None = None,
    description: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    keys: Sequence[str] = (),
    limit: int | None = None,
    today: dt.date | None = None,
) -> Query:
    """Validate the `find` filters and turn them into a Query."""
    if level not in LEVELS:
        raise UsageError(f"--level '{level}' is not one of {', '.join(LEVELS)}")
    if root not in ROOTS:
        raise UsageError(f"--root '{root}' is not one of {', '.join(ROOTS)}")
    if root == "study" and level == "patient":
        raise UsageError(
            "--level patient needs the Patient Root model",
            hint="add --root patient (the Study Root model has no patient level)",
        )
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: expected a number of matches of at least 1")

    query = Query(level=level, root=root, limit=limit)

    def put(keyword: str, value: str) -> None:
        key = lookup_key(keyword)
        query.filters[key.keyword] = (key, value)

    if patient_id is not None:
        put("PatientID", patient_id)
    if name is not None:
        put("PatientName", name)
    if birthdate is not None:
        put("PatientBirthDate", parse_date(birthdate, today=today, what="--birthdate"))
    if date is not None:
        put("StudyDate", parse_date(date, today=today, what="--date"))
    if modality is not None:
        mods = [m.strip().upper() for m in modality.replace("\\", ",").split(",") if m.strip()]
        if not mods or any(not re.fullmatch(r"[A-Z0-9]{1,16}", m) for m in mods):
            raise UsageError(f"--modality '{modality}': expected codes like CT or CT,MR")
        put("ModalitiesInStudy" if level in ("patient", "study") else "Modality", "\\".join(mods))
    if accession is not None:
        put("AccessionNumber", accession)
    if description is not None:
        put("StudyDescription" if level in ("patient", "study") else "SeriesDescription",
            description)
    if study_uid is not None:
        put("StudyInstanceUID", _uid_list(study_uid, "--study-uid"))
    if series_uid is not None:
        put("SeriesInstanceUID", _uid_list(series_uid, "--series-uid"))
    for option in keys:
        key, value = parse_key_option(option)
        if value:
            query.filters[key.keyword] = (key, value)
        query.extra_keys.append(key)
    return query


def uid_line(record: dict[str, object], level: str) -> str:
    """The `uids` output line of one match: its unique key with the keys above it."""
    keys: Iterable[str]
    if level == "patient":
        keys = ("PatientID",)
    else:
        keys = [UNIQUE_KEY[lv] for lv in LEVELS[1 : LEVELS.index(level) + 1]]
    parts = []
    for keyword in keys:
        values = _json_values(record, lookup_key(keyword).hex)
        parts.append(str(values[0]) if values else "")
    return "/".join(parts)


def _json_values(record: dict[str, object], hex_tag: str) -> list[object]:
    element = record.get(hex_tag)
    if isinstance(element, dict):
        value = element.get("Value")
        if isinstance(value, list):
            return value
    return []


def normalise_record(record: dict[str, object], tags: frozenset[str]) -> dict[str, object]:
    """A match as medimg prints it: only `tags`, only elements with a value, in tag order."""
    return {
        tag: element
        for tag, element in sorted(record.items())
        if tag in tags and isinstance(element, dict) and element.get("Value") not in (None, [])
    }
