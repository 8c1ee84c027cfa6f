"""Receiving instances: C-STORE sub-operations of C-MOVE (embedded SCP) and C-GET.

Received bytes go to disk as they came, behind a file meta header built by
hand: no pydicom decode or re-encode (PERFORMANCE.md: the largest costs of a
C-STORE sub-operation). Only the few attributes the layout needs are read.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from medimg_cli import __version__
from medimg_cli.storage import Layout, inside, write_new_file

log = logging.getLogger("medimg.dimse")

# Our implementation class UID (a UUID-derived 2.25 root) and version name.
IMPLEMENTATION_UID = "2.25.186302817839611744452536069613532962874"
IMPLEMENTATION_VERSION = f"MEDIMG_{__version__}"[:16]
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
_PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(tag_elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, tag_elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, tag_elem, vr, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_aet: str) -> bytes:
    """The preamble, `DICM` and the File Meta Information group (PS3.10 7.1), as bytes."""
    body = b"".join(
        [
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", _uid(sop_class)),
            _element(0x0003, b"UI", _uid(sop_instance)),
            _element(0x0010, b"UI", _uid(transfer_syntax)),
            _element(0x0012, b"UI", _uid(IMPLEMENTATION_UID)),
            _element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION)),
            *([_element(0x0016, b"AE", _text(source_aet.strip()))] if source_aet.strip() else []),
        ]
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return _PREAMBLE + group_length + body


def read_header(data: bytes, transfer_syntax: str, tags: tuple[int, ...]) -> dict[int, str]:
    """The text values of a few top-level attributes of an encoded dataset.

    Reads only up to the last tag wanted (never the pixel data); sequences on
    the way are skipped by pydicom's raw reader without being converted.
    """
    from medimg_cli.dimse.dicomjson import scan_text

    if not tags:
        return {}
    if transfer_syntax == DEFLATED:
        data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, 1 << 20)
    elif transfer_syntax != EXPLICIT_BIG:
        fast = scan_text(data, transfer_syntax == IMPLICIT_LITTLE, tags)
        if fast is not None:
            return fast
    from pydicom.filereader import read_dataset

    last = max(tags)
    ds = read_dataset(
        BytesIO(data),
        transfer_syntax == IMPLICIT_LITTLE,
        transfer_syntax != EXPLICIT_BIG,
        stop_when=lambda tag, vr, length: tag > last,
    )
    values: dict[int, str] = {}
    for tag in tags:
        try:
            value = ds[tag].value
        except (KeyError, ValueError, TypeError):
            continue
        if value is None:
            continue
        values[tag] = str(value[0] if isinstance(value, list) else value)
    return values


@dataclass(frozen=True)
class Received:
    """One instance written to disk."""

    path: Path
    sop_instance_uid: str
    study_instance_uid: str
    size: int


class InstanceWriter:
    """The C-STORE handler: writes each received instance under `out` by `layout`.

    Thread-safe: the embedded SCP may call it from several association threads.
    `on_received` is called with each written file; `last_activity` is when the
    last instance arrived (the idle watchdog reads it).
    """

    def __init__(
        self,
        out: Path,
        layout: Layout,
        on_received: Callable[[Received], None] | None = None,
        on_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        self.out = out.expanduser().resolve()
        self.layout = layout
        self.on_received = on_received
        self.on_failed = on_failed
        self.lock = threading.Lock()
        self.last_activity = time.monotonic()
        self.received = 0
        self.bytes = 0
        self.failed = 0
        self.made_dirs: set[Path] = set()

    def handle(self, event: Any) -> int:
        """EVT_C_STORE handler: returns the C-STORE-RSP status."""
        self.last_activity = time.monotonic()
        request = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_instance = str(request.AffectedSOPInstanceUID or "")
        syntax = str(event.context.transfer_syntax)
        stream = request.DataSet
        data = stream.getvalue() if isinstance(stream, BytesIO) else b""
        try:
            values = self._layout_values(data, syntax, sop_class, sop_instance)
            target = inside(self.out, self.layout.relative_path(values))
            meta = file_meta(sop_class, sop_instance, syntax, event.assoc.requestor.ae_title)
            if target.parent not in self.made_dirs:
                target.parent.mkdir(parents=True, exist_ok=True)
                self.made_dirs.add(target.parent)
            size = write_new_file(target, (meta, data), make_parent=False)
        except Exception as exc:  # the peer gets a failure status; we carry on
            log.warning("could not store %s: %s", sop_instance, exc)
            with self.lock:
                self.failed += 1
            if self.on_failed is not None:
                self.on_failed(sop_instance, str(exc))
            return 0xA700 if isinstance(exc, OSError) else 0xC210
        received = Received(target, sop_instance, values.get("StudyInstanceUID", ""), size)
        with self.lock:
            self.received += 1
            self.bytes += size
            self.last_activity = time.monotonic()
            if self.on_received is not None:
                self.on_received(received)
        return 0x0000

    def _layout_values(
        self, data: bytes, syntax: str, sop_class: str, sop_instance: str
    ) -> dict[str, str]:
        wanted = tuple(t for t in (*self.layout.tags, 0x0020000D) if t not in (
            0x00080018, 0x00080016))
        header = read_header(data, syntax, tuple(sorted(set(wanted))))
        from medimg_cli.storage import LAYOUT_FIELDS

        names = {tag: name for name, tag in LAYOUT_FIELDS.items()}
        values = {names[tag]: value for tag, value in header.items() if tag in names}
        values["SOPInstanceUID"] = sop_instance
        values["SOPClassUID"] = sop_class
        return values
