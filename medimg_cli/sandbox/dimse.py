"""The sandbox's DIMSE side: a pynetdicom SCP answering from the archive.

C-ECHO; C-FIND at every level of Patient Root and Study Root (matching in
`matching`); C-MOVE to the destinations the sandbox knows (0xA801 for any
other); C-GET; C-STORE of every storage SOP class in any transfer syntax.

Speed (PERFORMANCE.md): C-FIND answers are encoded here by hand (no pydicom
Dataset per match) and passed through pynetdicom's encoder; instances go out
of C-GET and C-MOVE by path with STORE_SEND_CHUNKED_DATASET (no decode), and
are only decoded when the peer refused their transfer syntax; received
instances are written as they came, behind a file meta header.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any

from medimg_cli.sandbox.matching import (
    CHARSET,
    QUERY_RETRIEVE_LEVEL,
    Key,
    Query,
    QueryError,
    matching_instances,
    run_query,
)
from medimg_cli.sandbox.store import (
    IMPLEMENTATION_UID,
    IMPLEMENTATION_VERSION,
    Archive,
    InstanceRef,
    NotStorable,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

Say = Callable[[str], None]

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                       "UT", "UV"})
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}


@dataclass(frozen=True)
class Destination:
    aet: str
    host: str
    port: int


@dataclass
class DimseSettings:
    aet: str = "SANDBOX"
    host: str = "127.0.0.1"
    port: int = 11112
    destinations: dict[str, Destination] = field(default_factory=dict)


class EncodedIdentifier:
    """An identifier already encoded for the context; pynetdicom's encoder passes it on."""

    def __init__(self, data: bytes) -> None:
        self.data = data


# --------------------------------------------------------------------------
# Identifiers: decoding a request, encoding an answer


def _text_value(elem: Any) -> str:
    value = elem.value
    if value is None or isinstance(value, (bytes, bytearray)) or elem.VR == "SQ":
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def identifier_keys(ds: Dataset) -> tuple[str, list[Key]]:
    """(QueryRetrieveLevel, keys) of a decoded identifier; QueryError when it is not usable."""
    level = str(ds.get("QueryRetrieveLevel", "") or "").strip().upper()
    keys: list[Key] = []
    for elem in ds:
        tag = f"{int(elem.tag):08X}"
        if tag in (QUERY_RETRIEVE_LEVEL, CHARSET) or elem.tag.group in (0x0000, 0x0002):
            continue
        vr = str(elem.VR)
        if len(vr) != 2:
            vr = "UN"
        keys.append(Key(tag, vr, _text_value(elem).strip()))
    if not level:
        raise QueryError("the identifier has no QueryRetrieveLevel")
    return level, keys


class MalformedIdentifier(Exception):
    """The identifier's bytes do not parse as a data set."""


def _decoded_identifier(event: Any) -> Dataset:
    """The request's identifier, its element structure checked first (pydicom would
    accept an element that claims more bytes than there are)."""
    from medimg_cli.dimse.store import CorruptFileError, check_structure

    syntax = event.context.transfer_syntax
    stream = event.request.Identifier
    data = stream.getvalue() if isinstance(stream, BytesIO) else b""
    if syntax != "1.2.840.10008.1.2.1.99":
        try:
            check_structure(memoryview(data), 0, syntax == IMPLICIT_LE,
                            syntax != "1.2.840.10008.1.2.2")
        except CorruptFileError as exc:
            raise MalformedIdentifier(str(exc)) from None
    identifier: Dataset = event.identifier
    return identifier


def _pad(raw: bytes, vr: str) -> bytes:
    if len(raw) % 2:
        return raw + (b"\x00" if vr == "UI" else b" ")
    return raw


def _element_bytes(tag: int, vr: str, element: dict[str, Any], implicit: bool) -> bytes | None:
    """One element from DICOM JSON, little endian; None if the hand encoder cannot."""
    values = element.get("Value") or []
    if vr in _BINARY:
        raw = struct.pack(f"<{len(values)}{_BINARY[vr]}", *values)
    elif vr == "PN":
        names = []
        for v in values:
            groups = [v.get("Alphabetic", ""), v.get("Ideographic", ""), v.get("Phonetic", "")]
            while groups and not groups[-1]:
                groups.pop()
            names.append("=".join(groups))
        raw = _pad("\\".join(names).encode("utf-8"), vr)
    elif vr in ("IS", "DS"):
        parts = [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                 for v in values]
        raw = _pad("\\".join(parts).encode("ascii"), vr)
    elif vr == "AT":
        raw = b"".join(struct.pack("<HH", int(v[:4], 16), int(v[4:], 16)) for v in values)
    elif vr in ("SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN") or not all(
            isinstance(v, str) for v in values):
        if values or "InlineBinary" in element or "BulkDataURI" in element:
            return None
        raw = b""
    else:
        raw = _pad("\\".join(values).encode("utf-8"), vr)
    group, elem = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, elem, len(raw)) + raw
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(raw)) + raw
    if len(raw) > 0xFFFF:
        return None
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(raw)) + raw


def encode_answer(answer: dict[str, Any], level: str, syntax: str) -> EncodedIdentifier | Dataset:
    """A C-FIND answer in the context's transfer syntax, in UTF-8 (ISO_IR 192)."""
    elements = dict(answer)
    elements[CHARSET] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    elements[QUERY_RETRIEVE_LEVEL] = {"vr": "CS", "Value": [level]}
    if syntax in (IMPLICIT_LE, EXPLICIT_LE):
        chunks: list[bytes] = []
        for tag_hex in sorted(elements):
            element = elements[tag_hex]
            encoded = _element_bytes(int(tag_hex, 16), element.get("vr", "UN"), element,
                                     syntax == IMPLICIT_LE)
            if encoded is None:
                break
            chunks.append(encoded)
        else:
            return EncodedIdentifier(b"".join(chunks))
    from pydicom.dataset import Dataset

    return Dataset.from_json(elements)


# --------------------------------------------------------------------------
# pynetdicom, adapted once per process


class StoredRef:
    """Marker mixin: a Dataset standing for a file in the archive (sent by path)."""


_installed = False


def install() -> None:
    """Tune pynetdicom for serving (idempotent): medimg's socket and fast-path patches,
    encoded identifiers passed through, archive files sent by path."""
    global _installed
    if _installed:
        return
    from pydicom import config as pydicom_config
    from pynetdicom import _config, service_class
    from pynetdicom.association import Association

    from medimg_cli.dimse.association import tune

    tune()
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    _config.STORE_SEND_CHUNKED_DATASET = True
    original_encode = getattr(service_class, "encode")  # noqa: B009

    def encode(ds: Any, implicit: bool, little: bool, deflated: bool = False) -> Any:
        if isinstance(ds, EncodedIdentifier):
            return ds.data
        return original_encode(ds, implicit, little, deflated)

    setattr(service_class, "encode", encode)  # noqa: B010
    original_store = Association.send_c_store

    def send_c_store(self: Any, dataset: Any, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None,
                     originator_id: int | None = None) -> Any:
        path = getattr(dataset, "medimg_path", None)
        if path is None:
            return original_store(self, dataset, msg_id, priority, originator_aet,
                                  originator_id)
        try:
            return original_store(self, path, msg_id, priority, originator_aet, originator_id)
        except ValueError:  # the peer refused its transfer syntax: decode and convert
            from pydicom import dcmread

            return original_store(self, dcmread(path), msg_id, priority, originator_aet,
                                  originator_id)

    Association.send_c_store = send_c_store  # type: ignore[method-assign]
    _install_fast_responses()
    _installed = True


_RSP_FIELDS = {"C_FIND": 0x8020, "C_GET": 0x8010, "C_MOVE": 0x8021}


def _command_element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def response_command(primitive: Any) -> bytes | None:
    """A C-FIND/C-GET/C-MOVE-RSP command set written by hand (PS3.7 9.3.2-9.3.4),
    or None when the primitive holds something unusual (left to pynetdicom)."""
    field = _RSP_FIELDS.get(type(primitive).__name__)
    if (field is None or primitive.MessageIDBeingRespondedTo is None
            or primitive.Status is None or not primitive.AffectedSOPClassUID
            or getattr(primitive, "ErrorComment", None) is not None
            or getattr(primitive, "OffendingElement", None) is not None):
        return None
    identifier = primitive.Identifier
    has_data = identifier is not None and bool(identifier.getvalue())
    parts = [
        _command_element(0x0002, str(primitive.AffectedSOPClassUID).encode("ascii")),
        _command_element(0x0100, struct.pack("<H", field)),
        _command_element(0x0120, struct.pack("<H", int(primitive.MessageIDBeingRespondedTo))),
        _command_element(0x0800, struct.pack("<H", 0x0000 if has_data else 0x0101)),
        _command_element(0x0900, struct.pack("<H", int(primitive.Status))),
    ]
    if field != 0x8020:
        for element, name in ((0x1020, "NumberOfRemainingSuboperations"),
                              (0x1021, "NumberOfCompletedSuboperations"),
                              (0x1022, "NumberOfFailedSuboperations"),
                              (0x1023, "NumberOfWarningSuboperations")):
            number = getattr(primitive, name, None)
            if number is not None:
                parts.append(_command_element(element, struct.pack("<H", int(number))))
    body = b"".join(parts)
    return _command_element(0x0000, struct.pack("<I", len(body))) + body


def _install_fast_responses() -> None:
    """Send Q/R responses without pydicom encoding their command sets (the largest cost
    of each C-FIND match, PERFORMANCE.md); -vv (fastpath disabled) goes the usual way."""
    from pynetdicom import dimse
    from pynetdicom.pdu_primitives import P_DATA

    from medimg_cli.dimse import fastpath

    original_send = dimse.DIMSEServiceProvider.send_msg

    def send_msg(self: Any, primitive: Any, context_id: int) -> None:
        command = response_command(primitive) if fastpath.enabled else None
        max_pdu = int(self.maximum_pdu_size or 0)
        if command is None or (max_pdu and max_pdu < 1024):
            original_send(self, primitive, context_id)
            return
        fragment = max_pdu - 6 if max_pdu else 1 << 22
        identifier = primitive.Identifier
        data = identifier.getvalue() if identifier is not None else b""
        items: list[tuple[int, bytes]] = [(context_id, b"\x03" + command)]
        for i in range(0, len(data), fragment):
            last = i + fragment >= len(data)
            items.append((context_id, (b"\x02" if last else b"\x00") + data[i : i + fragment]))
        size = 0
        pdata = P_DATA()
        for item in items:
            if size and max_pdu and size + len(item[1]) + 4 > max_pdu - 6:
                self.dul.send_pdu(pdata)
                pdata, size = P_DATA(), 0
            pdata.presentation_data_value_list.append(item)
            size += len(item[1]) + 4
        self.dul.send_pdu(pdata)

    dimse.DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]


def _stored_ref(ref: InstanceRef) -> Dataset:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPInstanceUID = ref.sop_uid
    ds.medimg_path = ref.path
    return ds


# --------------------------------------------------------------------------
# The handlers


class DimseServer:
    """The SCP: `start()` listens (in pynetdicom's threads), `stop()` closes."""

    def __init__(self, archive: Archive, settings: DimseSettings, say: Say) -> None:
        self.archive = archive
        self.settings = settings
        self.say = say
        self.server: Any = None
        self._stores: dict[int, list[int]] = {}  # assoc id -> [stored, failed]
        self._lock = threading.Lock()

    # -- lifecycle

    def make_ae(self) -> Any:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            PatientRootQueryRetrieveInformationModelFind,
            PatientRootQueryRetrieveInformationModelGet,
            PatientRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelGet,
            StudyRootQueryRetrieveInformationModelMove,
            Verification,
        )

        ae = AE(ae_title=self.settings.aet)
        ae.implementation_class_uid = IMPLEMENTATION_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION
        ae.maximum_pdu_size = 0
        ae.require_called_aet = True
        ae.maximum_associations = 64
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_supported_context(Verification)
        syntaxes = [EXPLICIT_LE, IMPLICIT_LE, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"]
        for sop in (PatientRootQueryRetrieveInformationModelFind,
                    StudyRootQueryRetrieveInformationModelFind,
                    PatientRootQueryRetrieveInformationModelMove,
                    StudyRootQueryRetrieveInformationModelMove,
                    PatientRootQueryRetrieveInformationModelGet,
                    StudyRootQueryRetrieveInformationModelGet):
            ae.add_supported_context(sop, syntaxes)
        # pynetdicom's acceptor takes the first syntax of *this* list that the peer
        # offers: uncompressed first, Explicit VR Little Endian (what most files are) first.
        first = [EXPLICIT_LE, IMPLICIT_LE]
        storage_syntaxes = [*first, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts not in first)]
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), storage_syntaxes,
                                     scu_role=True, scp_role=True)
        return ae

    def start(self) -> None:
        from pynetdicom import evt

        install()
        ae = self.make_ae()
        handlers = [
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_RELEASED, self.on_closed),
            (evt.EVT_ABORTED, self.on_closed),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_STORE, self.on_store),
        ]
        self.server = ae.start_server((self.settings.host, self.settings.port), block=False,
                                      evt_handlers=handlers)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # -- association events

    @staticmethod
    def _who(event: Any) -> str:
        requestor = event.assoc.requestor
        return f"{str(requestor.ae_title).strip()}@{requestor.address}:{requestor.port}"

    def on_accepted(self, event: Any) -> None:
        called = str(event.assoc.acceptor.ae_title).strip()
        self.say(f"dimse: association from {self._who(event)} to {called} accepted")

    def on_rejected(self, event: Any) -> None:
        primitive = getattr(event.assoc.requestor, "primitive", None)
        called = str(getattr(primitive, "called_ae_title", "") or "?").strip()
        self.say(f"dimse: association from {self._who(event)} rejected "
                 f"(called AE title '{called}' is not '{self.settings.aet}')")

    def on_closed(self, event: Any) -> None:
        with self._lock:
            counts = self._stores.pop(id(event.assoc), None)
        if counts:
            self.say(f"dimse: C-STORE from {self._who(event)}: {counts[0]} stored, "
                     f"{counts[1]} failed")
        how = "released" if event.event.name == "EVT_RELEASED" else "aborted"
        self.say(f"dimse: association from {self._who(event)} {how}")

    def on_echo(self, event: Any) -> int:
        self.say(f"dimse: C-ECHO from {self._who(event)}")
        return 0x0000

    # -- C-FIND

    def on_find(self, event: Any) -> Iterator[tuple[int, Any]]:
        started = time.perf_counter()
        model = str(event.request.AffectedSOPClassUID)
        syntax = str(event.context.transfer_syntax)
        try:
            level, keys = identifier_keys(_decoded_identifier(event))
        except QueryError as exc:
            self.say(f"dimse: C-FIND from {self._who(event)} failed: {exc}")
            yield 0xA900, None
            return
        except Exception as exc:  # the identifier does not decode
            self.say(f"dimse: C-FIND from {self._who(event)} failed: identifier cannot be "
                     f"decoded ({exc})")
            yield 0xC310, None
            return
        if level == "PATIENT" and model == STUDY_ROOT_FIND:
            self.say(f"dimse: C-FIND from {self._who(event)} failed: no PATIENT level in "
                     "Study Root")
            yield 0xA900, None
            return
        count = 0
        try:
            for answer in run_query(self.archive, Query(level, keys), aet=self.settings.aet):
                if event.is_cancelled:
                    self.say(f"dimse: C-FIND {level} from {self._who(event)} cancelled "
                             f"after {count} matches")
                    yield 0xFE00, None
                    return
                count += 1
                yield 0xFF00, encode_answer(answer, level, syntax)
        except QueryError as exc:
            self.say(f"dimse: C-FIND from {self._who(event)} failed: {exc}")
            yield 0xA900, None
            return
        ms = (time.perf_counter() - started) * 1000
        self.say(f"dimse: C-FIND {level} from {self._who(event)}: {count} matches "
                 f"({ms:.0f} ms)")

    # -- C-GET and C-MOVE

    def _select(self, event: Any) -> list[InstanceRef]:
        level, keys = identifier_keys(_decoded_identifier(event))
        return matching_instances(self.archive, level, keys)

    def on_get(self, event: Any) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            refs = self._select(event)
        except Exception as exc:
            self.say(f"dimse: C-GET from {self._who(event)} failed: {exc}")
            raise
        yield len(refs)
        for ref in refs:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, _stored_ref(ref)
        ms = (time.perf_counter() - started) * 1000
        self.say(f"dimse: C-GET from {self._who(event)}: {len(refs)} instances ({ms:.0f} ms)")

    def on_move(self, event: Any) -> Iterator[Any]:
        started = time.perf_counter()
        dest_aet = str(event.move_destination or "").strip()
        dest = self.settings.destinations.get(dest_aet)
        if dest is None:
            self.say(f"dimse: C-MOVE from {self._who(event)} to unknown destination "
                     f"'{dest_aet}' refused (0xA801); known: "
                     + (", ".join(sorted(self.settings.destinations)) or "none"))
            yield None, None
            return
        try:
            refs = self._select(event)
        except Exception as exc:
            self.say(f"dimse: C-MOVE from {self._who(event)} failed: {exc}")
            yield dest.host, dest.port
            raise
        yield dest.host, dest.port, {"contexts": _store_contexts(refs)}
        yield len(refs)
        for ref in refs:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, _stored_ref(ref)
        ms = (time.perf_counter() - started) * 1000
        self.say(f"dimse: C-MOVE from {self._who(event)} to {dest_aet}@{dest.host}:"
                 f"{dest.port}: {len(refs)} instances ({ms:.0f} ms)")

    # -- C-STORE

    def on_store(self, event: Any) -> int:
        request = event.request
        stream = request.DataSet
        data = stream.getvalue() if isinstance(stream, BytesIO) else b""
        key = id(event.assoc)
        try:
            self.archive.store_dataset(
                str(request.AffectedSOPClassUID or ""), str(request.AffectedSOPInstanceUID or ""),
                str(event.context.transfer_syntax), data,
                str(event.assoc.requestor.ae_title).strip())
            status, failed = 0x0000, 0
        except NotStorable as exc:
            self.say(f"dimse: C-STORE of {request.AffectedSOPInstanceUID} from "
                     f"{self._who(event)} failed: {exc}")
            status, failed = 0xC000, 1
        except OSError as exc:
            self.say(f"dimse: C-STORE of {request.AffectedSOPInstanceUID} failed: {exc}")
            status, failed = 0xA700, 1
        with self._lock:
            counts = self._stores.setdefault(key, [0, 0])
            counts[0] += 1 - failed
            counts[1] += failed
        return status


def _store_contexts(refs: list[InstanceRef]) -> list[Any]:
    """Storage contexts for a C-MOVE sub-association: per SOP class, its files' syntaxes
    first, then the two uncompressed ones (at most 128)."""
    from pynetdicom import build_context

    syntaxes: dict[str, list[str]] = {}
    for ref in refs:
        known = syntaxes.setdefault(ref.sop_class, [])
        if ref.transfer_syntax not in known:
            known.append(ref.transfer_syntax)
    contexts = []
    for sop, own in syntaxes.items():
        wanted = [*own, *(ts for ts in (EXPLICIT_LE, IMPLICIT_LE) if ts not in own)]
        contexts.append(build_context(sop, wanted))
    return contexts[:128]


def parse_destination(text: str) -> Destination:
    """``AET=HOST:PORT`` -> Destination; ValueError with what is wrong."""
    aet, sep, rest = text.partition("=")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or not aet.strip() or not host or not port.isdigit():
        raise ValueError(f"'{text}' is not AET=HOST:PORT")
    if len(aet.strip()) > 16:
        raise ValueError(f"AE title '{aet.strip()}' is longer than 16 characters")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} is not in 1..65535")
    return Destination(aet.strip(), host, number)


def destinations(items: Mapping[str, Destination]) -> str:
    return ", ".join(f"{d.aet}={d.host}:{d.port}" for d in items.values())
