"""Query matching for the sandbox, shared by C-FIND and QIDO-RS (PS3.4 C.2.2.2).

A query is a level and a list of keys (tag, VR, value). Each key both filters
and asks for the attribute back:

- empty value, or ``*``: universal matching (everything matches);
- UI with backslashes: list of UIDs; any other value with backslashes: list
  matching, any one matches;
- DA, TM, DT with a hyphen: range matching (``a-b``, ``a-``, ``-b``);
- ``*`` and ``?`` in other text values: wildcard matching;
- otherwise single value matching; person names ignore case (as Orthanc does).

A multi-valued attribute matches when one of its values does; an attribute the
record lacks never matches a non-universal key. Keys of a lower level than
the query's (SeriesDescription at STUDY level) are returned empty and do not
filter. Answers come from the sqlite index, never from the files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from medimg_cli.sandbox.store import Archive, InstanceRef, uid_list

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# Where attributes live (PS3.4 C.6.1.1, C.6.2.1 and what Orthanc indexes).
STUDY_TAGS = frozenset({
    "00080020", "00080030", "00080050", "00080051", "00080090", "00081030", "00081060",
    "00081032", "00081080", "00200010", "0020000D", "00101010", "00101020", "00101030",
    "00102180", "001021B0", "00080061", "00080062", "00201206", "00201208", "00080063",
    "00321060", "00080056",
})
SERIES_TAGS = frozenset({
    "00080060", "0020000E", "00200011", "0008103E", "00080021", "00080031", "00180015",
    "00181030", "00400244", "00400245", "00400254", "00400253", "00201209", "00080070",
    "00081090", "00081010", "00200060", "00080064", "00400275", "00081111", "00200052",
})
INSTANCE_TAGS = frozenset({
    "00080018", "00080016", "00200013", "00280010", "00280011", "00280008", "00280100",
    "00280004", "00280002", "00080023", "00080033", "00080008", "00200032", "00200037",
    "00201041", "00080012", "00080013", "00200012", "0040A491", "0040A493", "0042001A",
})
COMPUTED_VR = {
    "00201200": "IS", "00201202": "IS", "00201204": "IS",  # patient related studies/series/inst
    "00201206": "IS", "00201208": "IS",  # study related series/instances
    "00201209": "IS",  # series related instances
    "00080061": "CS", "00080062": "UI",  # modalities / SOP classes in study
    "00080056": "CS", "00080054": "AE",  # instance availability, retrieve AE title
}
QUERY_RETRIEVE_LEVEL = "00080052"
CHARSET = "00080005"
_UNIQUE = {"PATIENT": "00100020", "STUDY": "0020000D", "SERIES": "0020000E",
           "IMAGE": "00080018"}


class QueryError(ValueError):
    """The query cannot be answered (bad level, bad value): a failure status / HTTP 400."""


@dataclass(frozen=True)
class Key:
    tag: str  # 8 upper-case hex digits
    vr: str
    value: str = ""  # the matching value as text; "" is universal


@dataclass
class Query:
    level: str
    keys: list[Key] = field(default_factory=list)
    fuzzy: bool = False

    def key(self, tag: str) -> Key | None:
        return next((k for k in self.keys if k.tag == tag), None)


def home_level(tag: str) -> str | None:
    if tag in INSTANCE_TAGS:
        return "IMAGE"
    if tag in SERIES_TAGS:
        return "SERIES"
    if tag in STUDY_TAGS:
        return "STUDY"
    if tag.startswith("0010"):
        return "PATIENT"
    return None


def _deeper(tag: str, level: str) -> bool:
    home = home_level(tag)
    if level == "PATIENT":
        return home not in ("PATIENT",) and tag not in ("00201200", "00201202", "00201204")
    return home is not None and LEVELS.index(home) > LEVELS.index(level)


# --------------------------------------------------------------------------
# Matching one value


@lru_cache(maxsize=512)
def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _strings(element: dict[str, Any] | None) -> list[str]:
    """An attribute's values as text (PN: each component group; numbers as text)."""
    if not element:
        return []
    out: list[str] = []
    for value in element.get("Value") or []:
        if isinstance(value, dict):
            out += [str(v) for k, v in value.items() if k in ("Alphabetic", "Ideographic",
                                                              "Phonetic") and v]
        elif value is not None:
            out.append(_number(value) if isinstance(value, float) else str(value))
    return out


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _in_range(value: str, low: str, high: str, vr: str) -> bool:
    if vr == "TM":
        value = value.replace(":", "")
        low = low.replace(":", "")
        high = high.replace(":", "")
        return (not low or value.ljust(6, "0") >= low.ljust(6, "0")) and (
            not high or value[: len(high.split(".")[0])] <= high)
    if vr == "DA":
        value, low, high = (v.replace(".", "") for v in (value, low, high))
    return (not low or value >= low) and (not high or value[: len(high)] <= high)


def value_matches(key: Key, element: dict[str, Any] | None) -> bool:
    """Whether an attribute (DICOM JSON element or None) matches a key (not universal)."""
    values = _strings(element)
    if not values:
        return False
    pattern = key.value
    if key.vr == "UI":
        wanted = set(uid_list(pattern))
        return any(v in wanted for v in values)
    alternatives = pattern.split("\\") if "\\" in pattern else [pattern]
    for alt in alternatives:
        if key.vr in ("DA", "TM", "DT") and "-" in alt:
            low, _, high = alt.partition("-")
            if any(_in_range(v, low.strip(), high.strip(), key.vr) for v in values):
                return True
            continue
        ignore_case = key.vr == "PN"
        if "*" in alt or "?" in alt:
            rx = _wildcard(alt, ignore_case)
            if any(rx.fullmatch(v) for v in values):
                return True
        elif ignore_case:
            if any(v.casefold() == alt.strip().casefold() for v in values):
                return True
        elif any(v.strip() == alt.strip() for v in values):
            return True
    return False


def is_universal(key: Key) -> bool:
    return key.vr == "SQ" or key.value.strip() in ("", "*")


# --------------------------------------------------------------------------
# Running a query


class _Computed:
    """Counts and lists that no single instance holds, computed once per query."""

    def __init__(self, archive: Archive, aet: str) -> None:
        self.archive = archive
        self.aet = aet
        self._cache: dict[str, dict[str, tuple[Any, ...]]] = {}

    def _table(self, name: str, sql: str) -> dict[str, tuple[Any, ...]]:
        if name not in self._cache:
            self._cache[name] = {row[0]: tuple(row[1:]) for row in self.archive.query(sql)}
        return self._cache[name]

    def element(self, tag: str, level: str, uid: str) -> dict[str, Any] | None:
        vr = COMPUTED_VR[tag]
        value: list[Any]
        if tag == "00080056":
            value = ["ONLINE"]
        elif tag == "00080054":
            value = [self.aet]
        elif level == "PATIENT" and tag in ("00201200", "00201202", "00201204"):
            row = self._table("patient", "SELECT patient_id, count(DISTINCT study_uid), "
                              "count(DISTINCT series_uid), count(*) FROM instances "
                              "GROUP BY patient_id").get(uid, (0, 0, 0))
            value = [row[("00201200", "00201202", "00201204").index(tag)]]
        elif level == "STUDY" and tag in ("00201206", "00201208", "00080062"):
            row = self._table("study", "SELECT study_uid, count(DISTINCT series_uid), "
                              "count(*), group_concat(DISTINCT sop_class) FROM instances "
                              "GROUP BY study_uid").get(uid, (0, 0, ""))
            if tag == "00080062":
                value = sorted(str(row[2]).split(",")) if row[2] else []
            else:
                value = [row[0 if tag == "00201206" else 1]]
        elif level == "STUDY" and tag == "00080061":
            row = self._table("modalities", "SELECT study_uid, group_concat(DISTINCT modality) "
                              "FROM series GROUP BY study_uid").get(uid, ("",))
            value = sorted(m for m in str(row[0] or "").split(",") if m)
        elif level == "SERIES" and tag == "00201209":
            row = self._table("series", "SELECT series_uid, count(*) FROM instances "
                              "GROUP BY series_uid").get(uid, (0,))
            value = [row[0]]
        else:
            return None
        return {"vr": vr, "Value": value} if value else {"vr": vr}


def _rows(archive: Archive, query: Query) -> Iterator[tuple[str, dict[str, Any]]]:
    """(unique key value, header JSON) of the candidate records, narrowed by UID keys in SQL."""
    level = query.level
    table, column = {"PATIENT": ("patients", "patient_id"), "STUDY": ("studies", "study_uid"),
                     "SERIES": ("series", "series_uid"), "IMAGE": ("instances", "sop_uid")}[level]
    where: list[str] = []
    params: list[Any] = []
    columns = {"00100020": "patient_id", "0020000D": "study_uid", "0020000E": "series_uid",
               "00080018": "sop_uid"}
    allowed = {"PATIENT": ("00100020",), "STUDY": ("00100020", "0020000D"),
               "SERIES": ("0020000D", "0020000E"),
               "IMAGE": ("0020000D", "0020000E", "00080018")}[level]
    for key in query.keys:
        if key.tag not in allowed or is_universal(key):
            continue
        if key.tag == "00100020" and ("*" in key.value or "?" in key.value
                                      or "\\" in key.value):
            continue
        values = uid_list(key.value) if key.tag != "00100020" else [key.value.strip()]
        if not values:
            continue
        where.append(f"{columns[key.tag]} IN ({','.join('?' * len(values))})")
        params += values
    sql = f"SELECT {column}, json FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY rowid"
    for uid, blob in archive.query(sql, params):
        yield uid, json.loads(blob)


def run_query(archive: Archive, query: Query, *, aet: str = "SANDBOX",
              limit: int | None = None, offset: int = 0) -> Iterator[dict[str, Any]]:
    """The matches of ``query`` as DICOM JSON holding every key asked for."""
    if query.level not in LEVELS:
        raise QueryError(f"unknown query/retrieve level '{query.level}'")
    computed = _Computed(archive, aet)
    level = query.level
    filters = [k for k in query.keys if not is_universal(k) and not _deeper(k.tag, level)]
    skipped = 0
    sent = 0
    for uid, record in _rows(archive, query):
        answer: dict[str, Any] = {}
        ok = True
        for key in query.keys:
            if key.tag in COMPUTED_VR:
                element = computed.element(key.tag, level, uid)
            elif _deeper(key.tag, level):
                element = None
            else:
                element = record.get(key.tag)
            if key in filters and not value_matches(key, element):
                ok = False
                break
            answer[key.tag] = element if element is not None else {"vr": key.vr}
        if not ok:
            continue
        if skipped < offset:
            skipped += 1
            continue
        yield answer
        sent += 1
        if limit is not None and sent >= limit:
            return


def matching_instances(archive: Archive, level: str, keys: Sequence[Key]) -> list[InstanceRef]:
    """The instances a C-MOVE/C-GET identifier selects (by its unique keys)."""
    if level not in LEVELS:
        raise QueryError(f"unknown query/retrieve level '{level}'")
    unique = [k for k in keys if k.tag in _UNIQUE.values() and not is_universal(k)]
    if not unique:
        raise QueryError(f"no unique key for a {level} level retrieve")
    where: list[str] = []
    params: list[Any] = []
    columns = {"00100020": "patient_id", "0020000D": "study_uid", "0020000E": "series_uid",
               "00080018": "sop_uid"}
    for key in unique:
        values = uid_list(key.value) if key.tag != "00100020" else [key.value.strip()]
        where.append(f"{columns[key.tag]} IN ({','.join('?' * len(values))})")
        params += values
    return archive.instance_refs("WHERE " + " AND ".join(where), params)
