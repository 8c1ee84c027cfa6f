"""C-FIND: run a Query against a DIMSE peer, yielding DICOM JSON records.

Results stream: each record is yielded as its C-FIND response arrives, so a
query with 100,000 matches never sits in memory. Queries below the top of the
information model that carry more than the upper levels' unique keys are
answered by walking the hierarchy (PS3.4 C.4.1.3.1), which every PACS accepts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from io import BytesIO
from typing import TYPE_CHECKING, Any

from medimg_cli.dimse.association import AssociationReport, Target, open_association
from medimg_cli.dimse.dicomjson import encoded_to_json
from medimg_cli.dimse.status import describe_status, no_response_error
from medimg_cli.errors import RemoteError, UsageError
from medimg_cli.query import DIMSE_LEVEL, UNIQUE_KEY, Query, Step, lookup_key, normalise_record

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
# The upper unique keys a walk fills in: keyword -> (tag as hex, VR).
_FIXED_KEYS = {
    "PatientID": ("00100020", "LO"),
    "StudyInstanceUID": ("0020000D", "UI"),
    "SeriesInstanceUID": ("0020000E", "UI"),
}
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


def to_json(
    data: bytes, implicit: bool, fixed: Mapping[str, str], tags: frozenset[str] | None = None
) -> dict[str, Any]:
    """A C-FIND response identifier in the DICOM JSON model, upper unique keys filled in.

    With `tags`, only those elements (with a value) are kept: see Query.output_tags.
    """
    record = encoded_to_json(data, implicit)
    for tag in _DROP:
        record.pop(tag, None)
    for keyword, value in fixed.items():
        hex_tag, vr = _FIXED_KEYS[keyword]
        if "Value" not in record.get(hex_tag, {}):
            record[hex_tag] = {"vr": vr, "Value": [value]}
    if tags is not None:
        return normalise_record(record, tags)
    return dict(sorted(record.items()))


def send_c_find(
    assoc: Association, target: Target, identifier: Dataset, model: str, msg_id: int
) -> Iterator[tuple[int, bytes | None, bool, str]]:
    """Send a C-FIND-RQ; yield (status, identifier bytes, implicit VR, error comment).

    The same exchange as pynetdicom's `send_c_find`, with the same reactor
    hand-off, but the response identifiers are handed over as bytes: decoding
    them into pydicom datasets cost more than the whole network exchange.
    """
    from pydicom.uid import UID
    from pynetdicom.dimse_primitives import C_FIND
    from pynetdicom.dsutils import encode

    context = assoc._get_valid_context(model, "", "scu")
    syntax = context.transfer_syntax[0]
    implicit = bool(syntax.is_implicit_VR)
    req = C_FIND()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = UID(model)
    req.Priority = 2
    encoded = encode(identifier, implicit, True, False)
    if encoded is None:  # pragma: no cover - build_identifier makes encodable datasets
        raise RemoteError("could not encode the C-FIND identifier")
    req.Identifier = BytesIO(encoded)

    assoc._reactor_checkpoint.clear()
    try:
        while not assoc._is_paused:
            time.sleep(0.0001)
        assoc.dimse.send_msg(req, int(context.context_id or 0))
        while True:
            _, rsp = assoc.dimse.get_msg(block=True)
            if rsp is None:
                raise no_response_error(assoc, target, "C-FIND")
            if not isinstance(rsp, C_FIND) or not rsp.is_valid_response:
                assoc.abort()
                raise RemoteError(
                    "the peer answered the C-FIND with an invalid message; aborted",
                    hint="rerun with -vv and send the log to the PACS vendor",
                )
            code = int(rsp.Status or 0)
            comment = str(rsp.ErrorComment or "")
            if code in _PENDING:
                stream = rsp.Identifier
                data = stream.getvalue() if isinstance(stream, BytesIO) else None
                yield code, data, implicit, comment
                continue
            yield code, None, implicit, comment
            return
    finally:
        assoc._reactor_checkpoint.set()


class _Finder:
    def __init__(self, assoc: Association, target: Target, query: Query) -> None:
        self.assoc = assoc
        self.target = target
        self.query = query
        self.model = FIND_MODELS[query.root]
        self.remaining = query.limit
        self.msg_id = 0
        self.deferred: list[dict[str, Any]] = []
        self.tags = query.output_tags() | {_MODALITIES_IN_STUDY, _MODALITY}

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
        for code, data, implicit, comment in send_c_find(
            self.assoc, self.target, identifier, self.model, msg_id
        ):
            if code in _PENDING:
                if cancelled or data is None:
                    continue
                record = to_json(data, implicit, fixed,
                                 self.tags if step.level == self.query.level else None)
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
        known = self.query.fixed_value(level)
        values: list[str] = [known] if known is not None else []
        if known is None:  # ask this level for its matches
            hex_tag = lookup_key(unique).hex
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
