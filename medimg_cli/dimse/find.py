"""C-FIND: run a Query against a DIMSE peer, yielding DICOM JSON records.

Results stream: each record is yielded as its C-FIND response arrives, so a
query with 100,000 matches never sits in memory. Queries below the top of the
information model that carry more than the upper levels' unique keys are
answered by walking the hierarchy (PS3.4 C.4.1.3.1), which every PACS accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from medimg_cli.dimse.association import AssociationReport, Target, open_association
from medimg_cli.dimse.status import check_no_response, describe_status
from medimg_cli.errors import RemoteError, UsageError
from medimg_cli.query import DIMSE_LEVEL, UNIQUE_KEY, Query, Step, lookup_key

if TYPE_CHECKING:
    from pydicom import Dataset
    from pynetdicom.association import Association

FIND_MODELS = {
    "study": "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root Query/Retrieve - FIND
    "patient": "1.2.840.10008.5.1.4.1.2.1.1",  # Patient Root Query/Retrieve - FIND
}
TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
_DROP = ("00080005", "00080052")  # SpecificCharacterSet, QueryRetrieveLevel
_PENDING = (0xFF00, 0xFF01)
_MODALITIES_IN_STUDY = "00080061"
_MODALITY = "00080060"
_STUDY_UID = "0020000D"
_PATIENT_ID = "00100020"
_CANCELLED = 0xFE00


def build_identifier(step: Step) -> Dataset:
    """The C-FIND identifier for one step of a query."""
    from pydicom import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = DIMSE_LEVEL[step.level]
    non_ascii = False
    for key, value in step.keys:
        if value and not value.isascii():
            non_ascii = True
        try:
            ds.add_new(key.tag, key.vr, value if value else None)
        except (ValueError, TypeError) as exc:
            raise UsageError(
                f"{key.keyword} '{value}' is not a valid {key.vr} value: {exc}"
            ) from None
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def to_json(identifier: Dataset, fixed: Mapping[str, str]) -> dict[str, Any]:
    """A C-FIND response identifier in the DICOM JSON model, upper unique keys filled in."""
    record: dict[str, Any] = identifier.to_json_dict()
    for tag in _DROP:
        record.pop(tag, None)
    for keyword, value in fixed.items():
        hex_tag = lookup_key(keyword).hex
        if "Value" not in record.get(hex_tag, {}):
            record[hex_tag] = {"vr": "UI" if keyword != "PatientID" else "LO", "Value": [value]}
    return dict(sorted(record.items()))


class _Finder:
    def __init__(self, assoc: Association, target: Target, query: Query) -> None:
        self.assoc = assoc
        self.target = target
        self.query = query
        self.model = FIND_MODELS[query.root]
        self.remaining = query.limit
        self.msg_id = 0
        self.deferred: list[dict[str, Any]] = []

    def run(
        self,
        step: Step,
        fixed: Mapping[str, str],
        accept: Callable[[dict[str, Any]], bool | None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One C-FIND; stops (with C-CANCEL) when the query's limit is reached.

        `accept` checks matches on our side: False drops one, None defers it
        (checked by `settle` once this C-FIND is over).
        """
        identifier = build_identifier(step)
        self.msg_id = self.msg_id % 65535 + 1
        msg_id = self.msg_id
        counting = step.level == self.query.level
        cancelled = False
        for status, response in self.assoc.send_c_find(identifier, self.model, msg_id=msg_id):
            check_no_response(status, self.assoc, self.target, "C-FIND")
            code = int(status.Status)
            if code in _PENDING:
                if cancelled or response is None:
                    continue
                record = to_json(response, fixed)
                verdict = accept(record) if accept is not None else True
                if verdict is None:
                    self.deferred.append(record)
                    continue
                if not verdict:
                    continue
                yield record
                if counting and self.count_one():
                    self.assoc.send_c_cancel(msg_id, query_model=self.model)
                    cancelled = True
            elif code in (0x0000, _CANCELLED):
                return
            else:
                comment = str(status.get("ErrorComment", "") or "")
                raise RemoteError(
                    f"C-FIND failed: {describe_status(code, 'find')}"
                    + (f" ({comment})" if comment else ""),
                    hint="the PACS refused the query; rerun with -vv to see the identifier sent",
                )

    def count_one(self) -> bool:
        """Count a delivered match; True when the limit is reached."""
        if self.remaining is None:
            return False
        self.remaining -= 1
        return self.remaining <= 0

    def run_study_level(self, step: Step, fixed: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """A study-level C-FIND, with ModalitiesInStudy checked on our side.

        Some PACS (DCMTK's dcmqrscp among them) neither match nor return
        ModalitiesInStudy. Matches that come back without it are checked after
        the query with a series-level C-FIND of their modalities, which are
        then filled in.
        """
        wanted = self.query.filters.get("ModalitiesInStudy")
        if wanted is None:
            yield from self.run(step, fixed)
            return
        modalities = set(wanted[1].split("\\"))

        def accept(record: dict[str, Any]) -> bool | None:
            found = record.get(_MODALITIES_IN_STUDY, {}).get("Value")
            if not found:
                return None
            return bool(modalities.intersection(str(v) for v in found))

        self.deferred = []
        yield from self.run(step, fixed, accept)
        deferred, self.deferred = self.deferred, []
        for record in deferred:
            if self.done():
                return
            found = self.series_modalities(record)
            if found:
                record[_MODALITIES_IN_STUDY] = {"vr": "CS", "Value": sorted(found)}
            if modalities.intersection(found):
                yield record
                self.count_one()

    def series_modalities(self, study: dict[str, Any]) -> set[str]:
        """The modalities of a study's series, by a series-level C-FIND."""
        fixed = {"StudyInstanceUID": str(study.get(_STUDY_UID, {}).get("Value", [""])[0])}
        if self.query.root == "patient":
            fixed["PatientID"] = str(study.get(_PATIENT_ID, {}).get("Value", [""])[0])
        step = Query(level="series", root=self.query.root).step("series", fixed)
        found: set[str] = set()
        for record in self.run(step, fixed):
            for modality in record.get(_MODALITY, {}).get("Value", []):
                found.add(str(modality))
        return found

    def done(self) -> bool:
        return self.remaining is not None and self.remaining <= 0

    def walk(self, depth: int, fixed: dict[str, str]) -> Iterator[dict[str, Any]]:
        chain = self.query.chain
        level = chain[depth]
        step = self.query.step(level, fixed)
        if level == self.query.level:
            yield from self.run_study_level(step, fixed) if level == "study" else self.run(
                step, fixed)
            return
        unique = UNIQUE_KEY[level]
        hex_tag = lookup_key(unique).hex
        values: list[str] = []
        for record in self.run(step, fixed):
            found = record.get(hex_tag, {}).get("Value")
            if found and str(found[0]) not in values:
                values.append(str(found[0]))
        for value in values:
            if self.done():
                return
            yield from self.walk(depth + 1, {**fixed, unique: value})


def find(
    target: Target, query: Query, *, report: list[AssociationReport] | None = None
) -> Iterator[dict[str, Any]]:
    """Run `query` over one association; yield each match as a DICOM JSON record."""
    model = FIND_MODELS[query.root]
    with open_association(target, [(model, TRANSFER_SYNTAXES)], report=report) as assoc:
        finder = _Finder(assoc, target, query)
        if query.needs_walk():
            yield from finder.walk(0, {})
        else:
            fixed = {
                UNIQUE_KEY[level]: query.filters[UNIQUE_KEY[level]][1]
                for level in query.chain[:-1]
            }
            step = query.step(query.level, fixed)
            if query.level == "study":
                yield from finder.run_study_level(step, fixed)
            else:
                yield from finder.run(step, fixed)
