"""The sandbox's archive: DICOM files in a folder, indexed in sqlite.

Files live under ``DATA/files/XX/SOPInstanceUID.dcm`` exactly as they came
(file meta plus the data set bytes received; never decoded and re-encoded).
``DATA/index.sqlite`` holds one row per patient, study, series and instance
with the instance's header as DICOM JSON (PS3.18 F.2; bulk data and private
elements left out), so that queries never open a file and a restart finds
everything that was stored. DiagnosticReports created over FHIR live in the
same database.

Thread-safe: one connection, one lock (the DIMSE and HTTP servers share it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
IMPLEMENTATION_UID = "2.25.186302817839611744452536069613532962874"
IMPLEMENTATION_VERSION = "MEDIMG_SANDBOX"
PIXEL_DATA = 0x7FE00010
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

STORED, ALREADY_STORED = "stored", "already stored"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    patient_id TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY, patient_id TEXT NOT NULL, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, modality TEXT NOT NULL,
    json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL, sop_class TEXT NOT NULL, transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL, size INTEGER NOT NULL, number INTEGER, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, json TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
"""


class NotStorable(Exception):
    """A data set the archive cannot take (no DICOM, no UIDs, unreadable header)."""


@dataclass(frozen=True)
class InstanceRef:
    """Where an instance is, and what a sender needs to know about it."""

    sop_uid: str
    sop_class: str
    transfer_syntax: str
    series_uid: str
    study_uid: str
    patient_id: str
    path: Path
    size: int


def _uid_bytes(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_aet: str = ""
              ) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1)."""
    version = IMPLEMENTATION_VERSION.encode("ascii")
    aet = source_aet.strip().encode("ascii", "replace")
    body = b"".join([
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _uid_bytes(sop_class)),
        _meta_element(0x0003, b"UI", _uid_bytes(sop_instance)),
        _meta_element(0x0010, b"UI", _uid_bytes(transfer_syntax)),
        _meta_element(0x0012, b"UI", _uid_bytes(IMPLEMENTATION_UID)),
        _meta_element(0x0013, b"SH", version + b" " * (len(version) % 2)),
        *([_meta_element(0x0016, b"AE", aet + b" " * (len(aet) % 2))] if aet else []),
    ])
    return (b"\x00" * 128 + b"DICM" + struct.pack("<HH2sHI", 0x0002, 0, b"UL", 4, len(body))
            + body)


def split_part10(data: bytes) -> tuple[dict[int, str], int]:
    """The file meta UIDs of a Part 10 file (element -> value) and where the data set starts."""
    from medimg_cli.part10 import REQUIRED, parse_file_meta

    try:
        return parse_file_meta(data, REQUIRED)
    except ValueError as exc:
        raise NotStorable(f"not a DICOM Part 10 file: {exc}") from None


def header_json(dataset: bytes, transfer_syntax: str) -> dict[str, Any]:
    """The DICOM JSON of a data set's header: everything before the pixel data,
    without bulk data and private elements, text decoded to Unicode."""
    if transfer_syntax in (IMPLICIT_LE, EXPLICIT_LE):
        from medimg_cli.dimse.dicomjson import elements_to_json, parse_flat

        elements = parse_flat(dataset, transfer_syntax == IMPLICIT_LE)
        if elements is not None:  # no sequences: the fast reader (same JSON as pydicom)
            kept = [e for e in elements if e[0] < PIXEL_DATA and not (e[0] >> 16) & 1
                    and e[0] >> 16 != 0x0002 and e[1] not in _BINARY_VRS]
            fast = elements_to_json(kept)
            if fast is not None:
                return fast
    from pydicom.filereader import read_dataset

    if transfer_syntax == DEFLATED_LE:
        dataset = zlib.decompressobj(-zlib.MAX_WBITS).decompress(dataset)
    implicit = transfer_syntax == IMPLICIT_LE
    little = transfer_syntax != EXPLICIT_BE
    try:
        ds = read_dataset(BytesIO(dataset), implicit, little,
                          stop_when=lambda tag, vr, length: tag >= PIXEL_DATA)
        for elem in list(ds):
            if elem.tag.is_private or elem.VR in _BINARY_VRS or elem.tag.group == 0x0002:
                del ds[elem.tag]
        result = ds.to_json_dict(bulk_data_threshold=1 << 16,
                                 bulk_data_element_handler=lambda elem: "")
    except Exception as exc:  # pydicom raises many kinds on broken data
        raise NotStorable(f"cannot read the data set: {exc}") from None
    return dict(result)


def first(record: dict[str, Any], tag: str) -> Any:
    """The first value of an element in DICOM JSON (a PN as its Alphabetic group)."""
    values = (record.get(tag) or {}).get("Value") or [None]
    value = values[0]
    if isinstance(value, dict) and "Alphabetic" in value:
        return value.get("Alphabetic")
    return value


def text(record: dict[str, Any], tag: str) -> str:
    value = first(record, tag)
    return "" if value is None or isinstance(value, dict) else str(value)


class Archive:
    """The files and the index. ``Archive(root)`` creates both when missing."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.files = self.root / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        try:
            self.db = sqlite3.connect(str(self.root / "index.sqlite"), check_same_thread=False,
                                      isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:  # a read-only folder, or index.sqlite is not a database
            why = str(exc)
            if "unable to open" in why or "readonly" in why:
                why += " (is the folder writable?)"
            raise OSError(f"cannot open its index {self.root / 'index.sqlite'}: {why}") from None

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- storing

    def path_for(self, sop_uid: str) -> Path:
        digest = hashlib.sha1(sop_uid.encode()).hexdigest()[:2]
        return self.files / digest / f"{sop_uid}.dcm"

    def has(self, sop_uid: str) -> bool:
        with self.lock:
            row = self.db.execute("SELECT 1 FROM instances WHERE sop_uid = ?",
                                  (sop_uid,)).fetchone()
        return row is not None

    def store_dataset(self, sop_class: str, sop_uid: str, transfer_syntax: str,
                      dataset: bytes, source_aet: str = "") -> str:
        """Store a data set received over the network (C-STORE): file meta + the bytes."""
        if not sop_uid or not sop_class:
            raise NotStorable("no SOP class or SOP instance UID")
        if self.has(sop_uid):
            return ALREADY_STORED
        header = header_json(dataset, transfer_syntax)
        meta = file_meta(sop_class, sop_uid, transfer_syntax, source_aet)
        return self._write_and_index(sop_class, sop_uid, transfer_syntax, header,
                                     (meta, dataset))

    def store_part10(self, data: bytes) -> tuple[str, str, str]:
        """Store a Part 10 file as it is (STOW-RS, import): (status, SOP class, SOP instance)."""
        meta, offset = split_part10(data)
        sop_class, sop_uid, syntax = meta[0x0002], meta[0x0003], meta[0x0010]
        if self.has(sop_uid):
            return ALREADY_STORED, sop_class, sop_uid
        header = header_json(data[offset:], syntax)
        return (self._write_and_index(sop_class, sop_uid, syntax, header, (data,)),
                sop_class, sop_uid)

    def index_in_place(self, paths: Iterable[Path]) -> int:
        """Index Part 10 files already under the data folder, where they are (no copy).

        Files that are not DICOM, or lack the UIDs, are skipped. Returns how many
        instances were new.
        """
        count = 0
        for path in paths:
            try:
                data = Path(path).read_bytes()
                meta, offset = split_part10(data)
                sop_class, sop_uid, syntax = meta[0x0002], meta[0x0003], meta[0x0010]
                if self.has(sop_uid):
                    continue
                header = header_json(data[offset:], syntax)
                status = self._index(sop_class, sop_uid, syntax, header, Path(path), len(data))
            except (NotStorable, OSError):
                continue
            count += status == STORED
        return count

    def _write_and_index(self, sop_class: str, sop_uid: str, syntax: str,
                         header: dict[str, Any], chunks: Sequence[bytes]) -> str:
        study_uid = text(header, "0020000D")
        series_uid = text(header, "0020000E")
        if not study_uid or not series_uid:
            raise NotStorable("the data set lacks StudyInstanceUID or SeriesInstanceUID")
        if text(header, "00080018") not in ("", sop_uid):
            raise NotStorable("SOPInstanceUID differs from the command's / file meta's")
        path = self.path_for(sop_uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.part")
        size = 0
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                size += len(chunk)
        os.replace(tmp, path)
        return self._index(sop_class, sop_uid, syntax, header, path, size)

    def _index(self, sop_class: str, sop_uid: str, syntax: str, header: dict[str, Any],
               path: Path, size: int) -> str:
        study_uid = text(header, "0020000D")
        series_uid = text(header, "0020000E")
        patient_id = text(header, "00100020")
        number = first(header, "00200013")
        blob = json.dumps(header, ensure_ascii=False, separators=(",", ":"))
        with self.lock:
            if self.has(sop_uid):
                return ALREADY_STORED
            self.db.execute("BEGIN")
            try:
                self.db.execute(
                    "INSERT OR REPLACE INTO patients(patient_id, json) VALUES (?, ?)",
                    (patient_id, blob))
                self.db.execute(
                    "INSERT OR IGNORE INTO studies(study_uid, patient_id, json) VALUES (?, ?, ?)",
                    (study_uid, patient_id, blob))
                self.db.execute(
                    "INSERT OR IGNORE INTO series(series_uid, study_uid, modality, json) "
                    "VALUES (?, ?, ?, ?)", (series_uid, study_uid, text(header, "00080060"), blob))
                self.db.execute(
                    "INSERT INTO instances(sop_uid, series_uid, study_uid, patient_id, "
                    "sop_class, transfer_syntax, path, size, number, json) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sop_uid, series_uid, study_uid, patient_id, sop_class, syntax,
                     str(path.resolve().relative_to(self.root)), size,
                     number if isinstance(number, int) else None, blob))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return STORED

    # -- reading

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return list(self.db.execute(sql, params).fetchall())

    def count_instances(self) -> int:
        return int(self.query("SELECT count(*) FROM instances")[0][0])

    def summary(self) -> tuple[int, int, int, int]:
        """(patients, studies, series, instances)."""
        row = self.query(
            "SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM studies), "
            "(SELECT count(*) FROM series), (SELECT count(*) FROM instances)")[0]
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def instance_refs(self, where: str = "", params: Sequence[Any] = ()) -> list[InstanceRef]:
        rows = self.query(
            "SELECT sop_uid, sop_class, transfer_syntax, series_uid, study_uid, patient_id, "
            f"path, size FROM instances {where} ORDER BY study_uid, series_uid, number, sop_uid",
            params)
        return [InstanceRef(r[0], r[1], r[2], r[3], r[4], r[5], self.root / r[6], r[7])
                for r in rows]

    # -- reports (FHIR DiagnosticReport)

    def put_report(self, report_id: str, created: str, resource: dict[str, Any]) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO reports(id, created, json) VALUES (?, ?, ?)",
                            (report_id, created, json.dumps(resource, ensure_ascii=False)))

    def reports(self) -> Iterator[dict[str, Any]]:
        for (blob,) in self.query("SELECT json FROM reports ORDER BY created, id"):
            yield json.loads(blob)

    def report(self, report_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT json FROM reports WHERE id = ?", (report_id,))
        return json.loads(rows[0][0]) if rows else None


def uid_list(value: str) -> list[str]:
    return [v.strip() for v in value.split("\\") if v.strip()]


def remove_stale_parts(archive: Archive) -> None:
    """Temporary files left by a crash."""
    for part in archive.files.glob("*/.*.part"):
        with contextlib.suppress(OSError):
            part.unlink()
