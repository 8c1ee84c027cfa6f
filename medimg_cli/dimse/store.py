"""C-STORE: send DICOM files to a DIMSE peer (`stow` with a DIMSE profile).

The way a file goes:

1. `scan` reads each file's meta information (group 0002: SOP class, SOP
   instance, transfer syntax) and nothing else. Files without a DICOM Part 10
   header are skipped; a file whose header cannot be read fails alone.
2. `plan_associations` proposes, per SOP class, a presentation context for each
   transfer syntax the files have, plus Explicit/Implicit VR Little Endian as a
   fallback, at most 128 contexts per association; more distinct pairs take
   several associations, one after the other.
3. `store_files` sends each file over one association per plan: the bytes after
   the file meta, as they are on disk, checked first for truncation (a walk over
   element headers, never a decode). When the peer refused the file's own
   transfer syntax but accepted the fallback and the file is uncompressed, the
   file is decoded with pydicom and sent in the accepted syntax; otherwise the
   file fails with the reason.
4. `stow` runs that in this process, or with `parallel` > 1 in worker
   processes (the work is CPU-bound under the GIL), each with its own
   association and share of the files, and aggregates their per-file results.

The C-STORE exchange itself (`_Exchange`) is written here, on the socket of
the association pynetdicom negotiated: with `send_c_store` every message went
through pydicom encoding and decoding of the command sets and two thread
hand-offs with pynetdicom's 1 ms reactor sleep between them. Measured with
2,000 small files into Orthanc: `send_c_store(path)` with
STORE_SEND_CHUNKED_DATASET 9.2 s, its own loop with the reactor still reading
5.1 s, this exchange 3.6 s (DCMTK storescu: 3.3-3.7 s on the same machine).
Association setup, release, abort and their diagnoses stay pynetdicom's.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from medimg_cli.dimse.association import Target, open_association
from medimg_cli.errors import (
    ConnectError,
    MedimgError,
    RefusedError,
    RemoteError,
    UsageError,
)
from medimg_cli.transfer import ItemResult, Progress, ProgressCallback, TransferSummary

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from pynetdicom.association import Association

log = logging.getLogger("medimg.dimse.store")

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
VERIFICATION = "1.2.840.10008.1.1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: not an instance to store
# Syntaxes pydicom re-encodes faithfully in little endian. Not Explicit VR Big
# Endian (retired): pydicom would copy OW/OF values without swapping their bytes.
CONVERTIBLE = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE})
MAX_CONTEXTS = 128  # per association (PS3.8 9.3.2.2: odd context IDs 1..255)
WHOLE_FILE_LIMIT = 4 << 20  # smaller files are read at once, larger ones streamed

STORED, WARNING, FAILED, SKIPPED = "stored", "warning", "failed", "skipped"


@dataclass(frozen=True)
class DicomFile:
    """A file to send, as its meta information describes it."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    offset: int  # where the data set starts, after the file meta
    size: int


@dataclass(frozen=True)
class FileResult:
    """What became of one file."""

    path: str
    sop_instance_uid: str
    status: str  # stored | warning | failed | skipped
    code: int | None = None  # the DIMSE status, when the peer answered
    message: str = ""
    bytes: int = 0
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """The line `stow` prints per file when stdout is piped."""
        return {"path": self.path, "sop_instance_uid": self.sop_instance_uid,
                "status": self.status, "code": self.code, "message": self.message}


ResultCallback = Callable[[FileResult], None]


@dataclass
class AssociationPlan:
    """The contexts one association proposes and the files it sends."""

    contexts: list[tuple[str, tuple[str, ...]]]
    files: list[DicomFile] = field(default_factory=list)


class NotDicomError(Exception):
    """No DICOM Part 10 header: skipped, not failed."""


class CorruptFileError(Exception):
    """A DICOM file whose header or element structure is broken."""


# --------------------------------------------------------------------------
# Reading files: the meta information and a structure check, never a decode

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_META_UIDS = {0x0002: "sop_class_uid", 0x0003: "sop_instance_uid", 0x0010: "transfer_syntax"}


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def read_file_meta(path: Path) -> DicomFile:
    """The meta information of a DICOM Part 10 file (reads the first few hundred bytes).

    Raises NotDicomError when there is no 'DICM' header, CorruptFileError when
    the header is broken or lacks the SOP class, instance or transfer syntax.
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)
        size = os.fstat(fh.fileno()).st_size
        if len(head) < 132 or head[128:132] != b"DICM":
            raise NotDicomError("not a DICOM file (no 'DICM' at byte 128)")
        values: dict[str, str] = {}
        pos = 132
        while True:
            if len(head) < pos + 12 and len(head) < size:
                head += fh.read(max(4096, pos + 12 - len(head)))
            if len(head) < pos + 8:
                break
            group, element = struct.unpack_from("<HH", head, pos)
            if group != 0x0002:
                break
            vr = head[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                if len(head) < pos + 12:
                    raise CorruptFileError(f"file meta truncated at byte {pos}")
                length = struct.unpack_from("<I", head, pos + 8)[0]
                pos += 12
            elif vr.isalpha() and vr.isupper():
                length = struct.unpack_from("<H", head, pos + 6)[0]
                pos += 8
            else:
                raise CorruptFileError(f"file meta element (0002,{element:04X}) has no valid VR")
            if length == _UNDEFINED or pos + length > size:
                raise CorruptFileError(f"file meta element (0002,{element:04X}) is truncated")
            if len(head) < pos + length:
                head += fh.read(pos + length - len(head))
            if element in _META_UIDS:
                values[_META_UIDS[element]] = _uid(head[pos : pos + length])
            pos += length
    missing = [name for name in ("sop_class_uid", "sop_instance_uid", "transfer_syntax")
               if not values.get(name)]
    if missing:
        names = {"sop_class_uid": "MediaStorageSOPClassUID",
                 "sop_instance_uid": "MediaStorageSOPInstanceUID",
                 "transfer_syntax": "TransferSyntaxUID"}
        raise CorruptFileError("file meta lacks " + ", ".join(names[m] for m in missing))
    if pos >= size:
        raise CorruptFileError("no data set after the file meta")
    return DicomFile(path, values["sop_class_uid"], values["sop_instance_uid"],
                     values["transfer_syntax"], pos, size)


def check_structure(buf: Any, start: int, implicit: bool, little: bool) -> None:
    """Walk the element headers of the data set in `buf[start:]`; raise if it is broken.

    Catches truncated files and garbage: an element that runs past the end of
    the file, an invalid VR, a sequence or item never closed. Values are
    skipped, never decoded. Trailing zero padding is tolerated.
    """
    end = len(buf)
    e = "<" if little else ">"
    fmt = (struct.Struct(e + "HH"), struct.Struct(e + "I"), struct.Struct(e + "H"))
    _walk_elements(buf, start, end, implicit, fmt, in_item=False)


def _walk_elements(buf: Any, pos: int, end: int, implicit: bool,
                   fmt: tuple[struct.Struct, ...], *, in_item: bool) -> int:
    tag_s, long_s, short_s = fmt
    while pos < end:
        if end - pos < 8:
            raise CorruptFileError(f"truncated: {end - pos} stray bytes at byte {pos}")
        group, element = tag_s.unpack_from(buf, pos)
        if group == 0xFFFE:
            if element == 0xE00D and in_item:
                return pos + 8
            raise CorruptFileError(f"unexpected (FFFE,{element:04X}) at byte {pos}")
        if group == 0 and element == 0 and not in_item and not any(buf[pos:end]):
            return end  # zero padding after the data set
        vr: bytes | None = None
        if implicit:
            length = long_s.unpack_from(buf, pos + 4)[0]
            pos += 8
        else:
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                if end - pos < 12:
                    raise CorruptFileError(f"truncated in element ({group:04X},{element:04X})")
                length = long_s.unpack_from(buf, pos + 8)[0]
                pos += 12
            elif vr.isalpha() and vr.isupper():
                length = short_s.unpack_from(buf, pos + 6)[0]
                pos += 8
            else:
                raise CorruptFileError(
                    f"element ({group:04X},{element:04X}) at byte {pos} has no valid VR")
        if length == _UNDEFINED:
            if vr == b"UN":  # PS3.5 6.2.2: contents of an undefined-length UN are implicit LE
                inner = (struct.Struct("<HH"), struct.Struct("<I"), struct.Struct("<H"))
                pos = _walk_items(buf, pos, end, True, inner)
            elif vr in (None, b"SQ", b"OB", b"OW"):
                pos = _walk_items(buf, pos, end, implicit, fmt)
            else:
                raise CorruptFileError(
                    f"element ({group:04X},{element:04X}) has undefined length as {vr!r}")
            continue
        pos += length
        if pos > end:
            raise CorruptFileError(
                f"truncated: element ({group:04X},{element:04X}) ends {pos - end} bytes "
                "past the end of the file")
    if in_item:
        raise CorruptFileError("truncated: an item is never closed")
    return pos


def _walk_items(buf: Any, pos: int, end: int, implicit: bool,
                fmt: tuple[struct.Struct, ...]) -> int:
    """An undefined-length sequence (or encapsulated pixel data), up to its delimiter."""
    tag_s, long_s, _ = fmt
    while True:
        if end - pos < 8:
            raise CorruptFileError("truncated: a sequence is never closed")
        group, element = tag_s.unpack_from(buf, pos)
        length = long_s.unpack_from(buf, pos + 4)[0]
        pos += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            return pos
        if (group, element) != (0xFFFE, 0xE000):
            raise CorruptFileError(f"expected an item at byte {pos - 8}")
        if length == _UNDEFINED:
            pos = _walk_elements(buf, pos, end, implicit, fmt, in_item=True)
        else:
            pos += length
            if pos > end:
                raise CorruptFileError("truncated in a sequence item")


_ENCODINGS: dict[str, tuple[bool, bool] | None] = {}


def _encoding(syntax: str) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) of a transfer syntax whose headers we can walk."""
    if syntax not in _ENCODINGS:
        from pydicom.uid import UID

        uid = UID(syntax)
        walkable = uid.is_transfer_syntax and not uid.is_deflated
        _ENCODINGS[syntax] = (uid.is_implicit_VR, uid.is_little_endian) if walkable else None
    return _ENCODINGS[syntax]


def check_file(f: DicomFile) -> None:
    """Raise CorruptFileError (or OSError) when the file's data set is broken or it changed.

    The structure check `_send_file` makes, for senders that need it before
    the first byte goes out (a STOW-RS part cannot be withdrawn once sent).
    """
    encoding = _encoding(f.transfer_syntax)
    with open(f.path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size != f.size:
            raise CorruptFileError("the file changed since it was read")
        if encoding is None:
            return
        if f.size <= WHOLE_FILE_LIMIT:
            check_structure(memoryview(fh.read()), f.offset, *encoding)
        else:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                check_structure(mapped, f.offset, *encoding)


def collect(paths: Iterable[str | Path]) -> list[Path]:
    """The files named, directories walked recursively (sorted), each file once."""
    found: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            found.append(p)

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    candidate = Path(root, name)
                    if candidate.is_file():
                        add(candidate)
        elif path.is_file():
            add(path)
        elif path.exists():
            raise UsageError(f"'{raw}' is neither a file nor a directory")
        else:
            raise UsageError(f"no such file or directory: '{raw}'")
    return found


def scan(paths: Sequence[Path]) -> tuple[list[DicomFile], list[FileResult]]:
    """Split `paths` into files to send and results already known (skipped, unreadable)."""
    files: list[DicomFile] = []
    known: list[FileResult] = []
    for path in paths:
        try:
            meta = read_file_meta(path)
        except NotDicomError as exc:
            known.append(FileResult(str(path), "", SKIPPED, message=str(exc)))
            continue
        except CorruptFileError as exc:
            known.append(FileResult(str(path), "", FAILED, message=f"corrupt DICOM file: {exc}"))
            continue
        except OSError as exc:
            known.append(FileResult(str(path), "", FAILED,
                                    message=f"cannot read: {exc.strerror or exc}"))
            continue
        if meta.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
            known.append(FileResult(str(path), meta.sop_instance_uid, SKIPPED,
                                    message="a DICOMDIR (media directory), not an instance"))
            continue
        files.append(meta)
    return files, known


# --------------------------------------------------------------------------
# Presentation contexts


def plan_associations(
    files: Sequence[DicomFile], max_contexts: int = MAX_CONTEXTS
) -> list[AssociationPlan]:
    """Group files into associations of at most `max_contexts` presentation contexts.

    Per SOP class: one context per transfer syntax its files have, plus one
    with whichever of Explicit and Implicit VR Little Endian is not among them
    (the fallback when the peer refuses a file's own syntax). Each association
    also proposes Verification, so that it stands when the peer refuses every
    storage context and each file can fail with its own reason.
    """
    room = max_contexts - 1  # Verification takes one
    if room < 2:
        raise ValueError("max_contexts must be at least 3")
    syntaxes: dict[str, list[str]] = {}
    for f in files:
        known = syntaxes.setdefault(f.sop_class_uid, [])
        if f.transfer_syntax not in known:
            known.append(f.transfer_syntax)
    groups: list[list[tuple[str, tuple[str, ...]]]] = []
    for sop, own in syntaxes.items():
        for i in range(0, len(own), room - 1):
            chunk = own[i : i + room - 1]
            contexts: list[tuple[str, tuple[str, ...]]] = [(sop, (ts,)) for ts in chunk]
            fallback = tuple(ts for ts in (EXPLICIT_LE, IMPLICIT_LE) if ts not in chunk)
            if fallback:
                contexts.append((sop, fallback))
            groups.append(contexts)
    plans: list[AssociationPlan] = []
    where: dict[tuple[str, str], AssociationPlan] = {}
    for contexts in groups:
        if not plans or len(plans[-1].contexts) + len(contexts) > max_contexts:
            plans.append(AssociationPlan([(VERIFICATION, (IMPLICIT_LE,))]))
        plans[-1].contexts.extend(contexts)
        for abstract, ts_list in contexts:
            if len(ts_list) == 1:
                where[(abstract, ts_list[0])] = plans[-1]
    for f in files:
        where[(f.sop_class_uid, f.transfer_syntax)].files.append(f)
    return plans


def _name(uid: str) -> str:
    from pydicom.uid import UID

    return str(UID(uid).name) or uid


def _is_encapsulated(syntax: str) -> bool:
    from pydicom.uid import UID

    return bool(UID(syntax).is_transfer_syntax and UID(syntax).is_encapsulated)


class _Contexts:
    """What the peer accepted, per SOP class: transfer syntax -> context ID."""

    def __init__(self, assoc: Association) -> None:
        self.accepted: dict[str, dict[str, int]] = {}
        self.rejected: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            syntax = str(cx.transfer_syntax[0])
            self.accepted.setdefault(str(cx.abstract_syntax), {}).setdefault(
                syntax, int(cx.context_id or 0))
        for cx in assoc.rejected_contexts:
            self.rejected.setdefault(str(cx.abstract_syntax), set()).add(
                str(cx.status or "rejected").lower())

    def choose(self, f: DicomFile) -> tuple[int, str]:
        """(context ID, syntax to send in); raises _Refused when the file cannot go."""
        offered = self.accepted.get(f.sop_class_uid, {})
        if f.transfer_syntax in offered:
            return offered[f.transfer_syntax], f.transfer_syntax
        sop = _name(f.sop_class_uid)
        if not offered:
            reasons = ", ".join(sorted(self.rejected.get(f.sop_class_uid, {"rejected"})))
            raise _Refused(f"the peer refused {sop} ({reasons})")
        refused = f"the peer refused {_name(f.transfer_syntax)} for {sop}"
        accepted = next((ts for ts in (EXPLICIT_LE, IMPLICIT_LE) if ts in offered), None)
        if accepted is None:
            others = ", ".join(sorted(_name(ts) for ts in offered))
            raise _Refused(f"{refused} (it accepts only {others})")
        if f.transfer_syntax not in CONVERTIBLE:
            why = ("medimg does not decompress pixel data" if _is_encapsulated(f.transfer_syntax)
                   else f"medimg does not convert from {_name(f.transfer_syntax)}")
            raise _Refused(f"{refused} and accepts only {_name(accepted)}; {why}")
        return offered[accepted], accepted


class _Refused(Exception):
    pass


# --------------------------------------------------------------------------
# The C-STORE exchange

_PDATA = 0x04
_RELEASE_RQ = 0x05
_ABORT = 0x07
_C_STORE_RSP = 0x8001


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def store_command(msg_id: int, sop_class: str, sop_instance: str, priority: int = 2) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), implicit VR little endian."""
    body = b"".join((
        _element(0x0002, sop_class.encode("ascii")),
        _element(0x0100, struct.pack("<H", 0x0001)),
        _element(0x0110, struct.pack("<H", msg_id)),
        _element(0x0700, struct.pack("<H", priority)),
        _element(0x0800, struct.pack("<H", 0x0000)),  # a data set follows
        _element(0x1000, sop_instance.encode("ascii")),
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def parse_command(data: bytes) -> dict[int, bytes]:
    """A command set (implicit VR little endian, group 0000) as element -> value bytes."""
    fields: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if group != 0x0000 or pos + length > len(data):
            raise RemoteError("the peer sent a malformed DIMSE command set")
        fields[element] = data[pos : pos + length]
        pos += length
    return fields


def _pdu_header(context_id: int, control: int, length: int) -> bytes:
    """P-DATA-TF PDU header with one PDV item of `length` bytes of fragment."""
    return struct.pack(">BBIIBB", _PDATA, 0, length + 6, length + 2, context_id, control)


class _Exchange:
    """C-STORE requests and responses on an association pynetdicom established.

    While inside `with`, the association's own reactor is paused and its DUL
    thread leaves the socket alone (its socket check is swapped for one that
    reports nothing, confirmed before the first send, and its transport is put
    aside): this thread writes the requests and reads the responses. Leaving
    restores pynetdicom's transport and reading, so that release and abort go
    the usual way.
    """

    def __init__(self, assoc: Association, target: Target) -> None:
        self.assoc = assoc
        self.target = target
        self.sock = cast(socket.socket, assoc.dul.socket.socket)  # type: ignore[union-attr]
        peer_max = int(assoc.acceptor.maximum_length or 0)
        self.fragment = peer_max - 6 if peer_max > 6 else 1 << 20
        self.msg_id = 0
        self.inbox = bytearray()
        self.transport: Any = None  # pynetdicom's, put aside while we own the socket
        from medimg_cli import trace

        self.traced = trace.current() is not None  # --trace: entries for each message

    def __enter__(self) -> _Exchange:
        assoc, dul = self.assoc, self.assoc.dul
        assoc._reactor_checkpoint.clear()
        deadline = time.monotonic() + self.target.timeout
        while not assoc._is_paused and time.monotonic() < deadline:
            time.sleep(0.0001)
        entered = threading.Event()

        def leave_socket_alone() -> bool:
            entered.set()
            dul._idle_timer.restart()
            return False

        dul._is_transport_event = leave_socket_alone  # type: ignore[method-assign]
        if not assoc._is_paused or not entered.wait(self.target.timeout):
            self._restore()
            raise RemoteError("the association's network thread did not answer",
                              hint="rerun with -vv and report it")
        # Hide the transport too: an idle wait that selects on the socket (fastpath)
        # would wake on every response meant for us and spin until we read it; that
        # cost 1.2 s of CPU and 1.5-3 s of wall time per 2,000 files.
        self.transport = dul.socket
        dul.socket = None
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        if self.transport is not None:
            self.assoc.dul.socket = self.transport
            self.transport = None
        with contextlib.suppress(AttributeError):
            del self.assoc.dul._is_transport_event
        self.assoc._reactor_checkpoint.set()

    def store(self, context_id: int, f: DicomFile, data: Any, what: str) -> tuple[int, str]:
        """Send one C-STORE-RQ with `data` (bytes, or an open file positioned at the
        data set); return the response's (status, error comment)."""
        self.msg_id = self.msg_id % 0xFFFF + 1
        command = store_command(self.msg_id, f.sop_class_uid, f.sop_instance_uid)
        if self.traced:
            from medimg_cli.dimse.tracing import store_request

            store_request(self.assoc, context_id, self.msg_id, f.sop_class_uid,
                          f.sop_instance_uid, f.size - f.offset)
        parts = self._fragments(context_id, command, 0x01)
        if isinstance(data, (bytes, bytearray, memoryview)):
            parts += self._fragments(context_id, data, 0x00)
            self._send(b"".join(parts), what)
        else:
            self._send(b"".join(parts), what)
            remaining = f.size - f.offset
            while remaining:
                try:
                    chunk = data.read(min(self.fragment, remaining))
                except OSError as exc:
                    raise MedimgError(f"cannot read {f.path} while sending it "
                                      f"({exc.strerror or exc}); the association was aborted"
                                      ) from None
                if not chunk:
                    raise MedimgError(f"{f.path} shrank while it was being sent; "
                                      "the association was aborted")
                remaining -= len(chunk)
                self._send(_pdu_header(context_id, 0x00 if remaining else 0x02, len(chunk)), what)
                self._send(chunk, what)
        return self._response(what)

    def _fragments(self, context_id: int, data: Any, kind: int) -> list[Any]:
        view = memoryview(data)
        parts: list[Any] = []
        for i in range(0, max(len(view), 1), self.fragment):
            piece = view[i : i + self.fragment]
            last = i + self.fragment >= len(view)
            parts += [_pdu_header(context_id, kind | (0x02 if last else 0), len(piece)), piece]
        return parts

    def _send(self, data: bytes, what: str) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise self._no_response(what) from None
        except OSError as exc:
            raise self._lost(what, exc) from None

    def _response(self, what: str) -> tuple[int, str]:
        command = bytearray()
        while True:
            pdu_type, body = self._read_pdu(what)
            if pdu_type == _ABORT:
                raise RefusedError(f"the peer aborted the association during C-STORE of {what}",
                                   hint="check the PACS's log; rerun with -vv for the exchange")
            if pdu_type == _RELEASE_RQ:
                raise RefusedError(
                    f"the peer asked to release the association during C-STORE of {what}",
                    hint="check the PACS's log")
            if pdu_type != _PDATA:
                raise RemoteError(f"the peer sent PDU type 0x{pdu_type:02X} during C-STORE")
            pos, done = 0, False
            while pos + 6 <= len(body):
                length = struct.unpack_from(">I", body, pos)[0]
                control = body[pos + 5]
                if control & 0x01:
                    command += body[pos + 6 : pos + 4 + length]
                    done = bool(control & 0x02)
                pos += 4 + length
            if done:
                break
        fields = parse_command(bytes(command))
        field_value = fields.get(0x0100, b"")
        responded = fields.get(0x0120, b"")
        if (len(field_value) != 2 or struct.unpack("<H", field_value)[0] != _C_STORE_RSP
                or len(responded) != 2 or struct.unpack("<H", responded)[0] != self.msg_id
                or len(fields.get(0x0900, b"")) != 2):
            raise RemoteError(f"the peer answered the C-STORE of {what} with an invalid message",
                              hint="rerun with -vv and send the log to the PACS vendor")
        status = struct.unpack("<H", fields[0x0900])[0]
        comment = fields.get(0x0902, b"").rstrip(b"\x00 ").decode("latin-1")
        if self.traced:
            from medimg_cli.dimse.tracing import store_response

            store_response(self.assoc, self.msg_id, status, comment)
        return status, comment

    def _read_pdu(self, what: str) -> tuple[int, bytes]:
        self._fill(6, what)
        length = struct.unpack_from(">I", self.inbox, 2)[0]
        self._fill(6 + length, what)
        pdu_type = self.inbox[0]
        body = bytes(self.inbox[6 : 6 + length])
        del self.inbox[: 6 + length]
        return pdu_type, body

    def _fill(self, n: int, what: str) -> None:
        while len(self.inbox) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self.inbox)))
            except TimeoutError:
                raise self._no_response(what) from None
            except OSError as exc:
                raise self._lost(what, exc) from None
            if not chunk:
                raise self._lost(what, None)
            self.inbox += chunk

    def _no_response(self, what: str) -> ConnectError:
        t = self.target
        return ConnectError(
            f"no C-STORE response from {t.host}:{t.port} within {t.timeout:g} s ({what})",
            hint="the PACS may be overloaded, or the network path broken; "
            "--timeout sets the limit")

    def _lost(self, what: str, exc: OSError | None) -> ConnectError:
        t = self.target
        reason = f": {exc.strerror or exc}" if exc is not None else ""
        return ConnectError(
            f"the connection to {t.host}:{t.port} was lost during C-STORE of {what}{reason}",
            hint="the PACS closed it or the network dropped it; check the PACS's log")


# --------------------------------------------------------------------------
# Sending files


def _result(f: DicomFile, status: int, comment: str, sent: int, seconds: float) -> FileResult:
    from pynetdicom.status import code_to_category

    from medimg_cli.dimse.status import describe_status

    category = code_to_category(status)
    kind = STORED if category == "Success" else WARNING if category == "Warning" else FAILED
    message = "" if kind == STORED else describe_status(status, "store")
    if comment and kind != STORED:
        message += f" ({comment})"
    return FileResult(str(f.path), f.sop_instance_uid, kind, status, message, sent, seconds)


def _convert(path: Path, syntax: str) -> bytes:
    """Decode the file with pydicom and encode its data set in `syntax`."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = dcmread(path)
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = syntax == IMPLICIT_LE
    write_dataset(out, ds)
    return bytes(out.getvalue())


def _send_file(exchange: _Exchange, contexts: _Contexts, f: DicomFile) -> FileResult:
    started = time.perf_counter()
    path = str(f.path)

    def failed(message: str) -> FileResult:
        return FileResult(path, f.sop_instance_uid, FAILED, None, message,
                          0, time.perf_counter() - started)

    try:
        context_id, syntax = contexts.choose(f)
    except _Refused as exc:
        return failed(str(exc))
    try:
        with open(f.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size != f.size:
                return failed("the file changed since it was read")
            encoding = _encoding(f.transfer_syntax)
            if syntax != f.transfer_syntax:
                try:
                    data: Any = _convert(f.path, syntax)
                except MedimgError:
                    raise
                except Exception as exc:  # pydicom's decode and encode raise many kinds
                    return failed(f"cannot convert from {_name(f.transfer_syntax)} to "
                                  f"{_name(syntax)}: {exc}")
            elif size <= WHOLE_FILE_LIMIT:
                data = memoryview(fh.read())[f.offset :]
                if encoding is not None:
                    check_structure(data, 0, *encoding)
            else:
                if encoding is not None:
                    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                        check_structure(mapped, f.offset, *encoding)
                fh.seek(f.offset)
                data = fh
            status, comment = exchange.store(context_id, f, data, path)
    except CorruptFileError as exc:
        return failed(f"corrupt DICOM file: {exc}")
    except OSError as exc:  # before anything was sent: the exchange raises only medimg errors
        return failed(f"cannot read: {exc.strerror or exc}")
    sent = len(data) if isinstance(data, (bytes, memoryview)) else f.size - f.offset
    result = _result(f, status, comment, sent, time.perf_counter() - started)
    if syntax != f.transfer_syntax:
        note = (f"sent as {_name(syntax)}: the peer refused {_name(f.transfer_syntax)} "
                f"for {_name(f.sop_class_uid)}")
        result = replace(result, message=f"{result.message}; {note}" if result.message else note)
    return result


def store_files(
    target: Target,
    files: Sequence[DicomFile],
    emit: ResultCallback,
    *,
    max_contexts: int = MAX_CONTEXTS,
) -> None:
    """Send `files` over as few associations as their contexts allow, one after another.

    Each file's result goes to `emit` as soon as its C-STORE-RSP arrives.
    Association failures raise ConnectError/RefusedError, as does a peer that
    aborts or stops answering mid-transfer.
    """
    for plan in plan_associations(files, max_contexts):
        with open_association(target, plan.contexts) as assoc:
            contexts = _Contexts(assoc)
            log.info("association %s -> %s: %d of %d contexts accepted, %d files",
                     target.calling_aet, target.called_aet, len(assoc.accepted_contexts),
                     len(plan.contexts), len(plan.files))
            with _Exchange(assoc, target) as exchange:
                for f in plan.files:
                    emit(_send_file(exchange, contexts, f))


# --------------------------------------------------------------------------
# Several associations in worker processes


def _split(files: Sequence[DicomFile], n: int) -> list[list[DicomFile]]:
    """At most `n` contiguous shares of about equal bytes (contiguous keeps series together)."""
    total = sum(f.size for f in files) or 1
    shares: list[list[DicomFile]] = [[] for _ in range(n)]
    sent = 0
    for f in files:
        shares[min(n - 1, sent * n // total)].append(f)
        sent += f.size
    return [share for share in shares if share]


def _worker(conn: Connection, target: Target, files: list[DicomFile], max_contexts: int) -> None:
    """A worker process: store a share of the files, report results in batches."""
    import signal

    def interrupted(signum: int, frame: Any) -> None:
        # Once: a second SIGINT (the terminal's and then ours) must not cut the abort short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    batch: list[FileResult] = []
    last = time.monotonic()

    def emit(result: FileResult) -> None:
        nonlocal last
        batch.append(result)
        if len(batch) >= 64 or time.monotonic() - last > 0.1:
            conn.send(("results", batch[:]))
            batch.clear()
            last = time.monotonic()

    try:
        try:
            store_files(target, files, emit, max_contexts=max_contexts)
        finally:
            if batch:
                conn.send(("results", batch))
        conn.send(("done", None))
    except KeyboardInterrupt:
        conn.send(("interrupted", None))
    except MedimgError as exc:
        conn.send(("error", (type(exc).__name__, exc.message, exc.hint)))
    except Exception as exc:
        conn.send(("error", ("MedimgError", f"internal error in a worker process: "
                                            f"{type(exc).__name__}: {exc}", None)))
    finally:
        conn.close()


_ERRORS: dict[str, type[MedimgError]] = {
    cls.__name__: cls for cls in (ConnectError, RefusedError, RemoteError, UsageError, MedimgError)
}


def _run_parallel(
    target: Target, shares: list[list[DicomFile]], emit: ResultCallback, max_contexts: int
) -> None:
    import multiprocessing
    import signal
    import sys
    from multiprocessing.connection import wait

    # fork is fast (nothing to import again) but unsafe beside other threads,
    # such as a progress bar's; then start clean interpreters instead.
    method = "fork" if threading.active_count() == 1 else "spawn"
    ctx = multiprocessing.get_context(method)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # a forked child must not write our buffered output again
    workers: dict[Connection, Any] = {}
    errors: list[MedimgError] = []
    try:
        for share in shares:
            receiver, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(  # type: ignore[attr-defined]
                target=_worker, args=(sender, target, share, max_contexts), daemon=True)
            process.start()
            sender.close()
            workers[receiver] = process
        while workers:
            for ready in wait(list(workers)):
                conn = cast("Connection", ready)
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    process = workers.pop(conn)
                    process.join(1)
                    errors.append(MedimgError(
                        f"a worker process ended unexpectedly (exit code {process.exitcode})",
                        hint="rerun with -vv and report it"))
                    continue
                if kind == "results":
                    for result in payload:
                        emit(result)
                    continue
                workers.pop(conn)
                if kind == "error":
                    name, message, hint = payload
                    errors.append(_ERRORS.get(name, MedimgError)(message, hint))
    finally:
        _stop_workers(list(workers.values()), signal.SIGINT)
    if errors:
        raise errors[0]


def _stop_workers(processes: list[Any], signum: int) -> None:
    """Ask live workers to abort their associations (SIGINT), then make sure they end."""
    for process in processes:
        if process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
    deadline = time.monotonic() + 5
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1)


# --------------------------------------------------------------------------
# The service


def stow(
    target: Target,
    paths: Sequence[str | Path],
    *,
    parallel: int = 1,
    on_result: ResultCallback | None = None,
    progress: ProgressCallback | None = None,
    max_contexts: int = MAX_CONTEXTS,
) -> TransferSummary:
    """C-STORE the DICOM files in `paths` (files or directories, recursively) to `target`.

    Every file ends in one FileResult, passed to `on_result` as it is known:
    stored, warning or failed with the DIMSE status meaning, or skipped (not
    DICOM). `parallel` > 1 splits the files over that many associations, each
    in its own process. Returns the summary (`exit_code` 0, 6 or 5); a
    connection or association failure raises ConnectError or RefusedError.
    """
    if parallel < 1:
        raise UsageError(f"--parallel {parallel}: expected 1 or more")

    def send(files: list[DicomFile], record: ResultCallback) -> None:
        workers = min(parallel, len(files))
        if workers > 1:
            _run_parallel(target, _split(files, workers), record, max_contexts)
        else:
            store_files(target, files, record, max_contexts=max_contexts)

    return send_all(target.profile, paths, send, on_result=on_result, progress=progress)


Sender = Callable[[list[DicomFile], ResultCallback], None]


def send_all(
    profile: str,
    paths: Sequence[str | Path],
    send: Sender,
    *,
    on_result: ResultCallback | None = None,
    progress: ProgressCallback | None = None,
) -> TransferSummary:
    """What every `stow` does whatever the protocol: find the files, read their meta,
    report the ones that are not DICOM or broken, hand the rest to `send` (C-STORE
    or STOW-RS), and count each FileResult it passes back into the summary."""
    summary = TransferSummary(operation="stow", profile=profile)
    candidates = collect(paths)
    files, known = scan(candidates)
    state = Progress(total=len(candidates))

    def record(result: FileResult) -> None:
        item = ItemResult(name=result.path, requested=1, bytes=result.bytes,
                          seconds=result.seconds, status=result.status, message=result.message)
        if result.status == STORED:
            item.done, summary.done, state.done = 1, summary.done + 1, state.done + 1
        elif result.status == WARNING:
            item.warnings, summary.warnings, state.warnings = (
                1, summary.warnings + 1, state.warnings + 1)
        elif result.status == SKIPPED:
            item.skipped, summary.skipped, state.skipped = 1, summary.skipped + 1, state.skipped + 1
        else:
            item.failed, summary.failed, state.failed = 1, summary.failed + 1, state.failed + 1
        summary.bytes += result.bytes
        state.bytes += result.bytes
        state.current = result.path
        summary.items.append(item)
        if on_result is not None:
            on_result(result)
        if progress is not None:
            progress(state)

    for result in known:
        record(result)
    if progress is not None:
        progress(state)
    if files:
        send(files, record)
    return summary.finish()

