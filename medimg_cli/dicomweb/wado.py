"""WADO-RS: retrieve studies, series and instances as multipart/related DICOM parts.

Each part is streamed to a temporary `.part` file below `--out` as its bytes
arrive (memory does not grow with the study), then its file meta and the
few attributes the layout needs are read from the head of that file, and it
is renamed to its place by the layout. A broken stream or a part that is not
DICOM leaves the complete parts, removes the broken one, and is reported as
a failure of that item.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_cli.dicomweb.multipart import (
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    TruncatedError,
    boundary_from_content_type,
)
from medimg_cli.errors import ConnectError, RefusedError, RemoteError, UsageError
from medimg_cli.storage import LAYOUT_FIELDS, PART_SUFFIX, Layout, inside
from medimg_cli.transfer import ItemResult, Progress, ProgressCallback, TransferSummary

if TYPE_CHECKING:
    import httpx

    from medimg_cli.dimse.retrieve import RetrieveItem

log = logging.getLogger("medimg.wado")

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
HEAD_BYTES = 64 * 1024  # the start of each part kept in memory for its meta and layout tags
MAX_HEAD_BYTES = 4 << 20  # read back from the file when the layout tags lie further in
_PROGRESS_EVERY = 0.1  # seconds between progress callbacks
_counter = itertools.count()


class NotDicomError(MultipartError):
    """A part that is not a DICOM Part 10 file."""


@dataclass
class WadoOptions:
    """Where and how to retrieve."""

    out: Path
    layout: Layout = field(default_factory=Layout)
    skip_existing: bool = False
    transfer_syntax: str = "*"
    frames: list[int] | None = None  # pixel data of these frames instead of instances
    rendered: str | None = None  # the Accept type of a rendered image instead of instances
    retries: int = 0  # after a broken stream: resume at instance level this many times


@dataclass(frozen=True)
class Written:
    """One instance written to disk."""

    path: Path
    sop_instance_uid: str
    study_instance_uid: str
    size: int


def check_transfer_syntax(value: str) -> str:
    value = value.strip()
    if value != "*" and not (_UID.match(value) and len(value) <= 64):
        raise UsageError(f"--transfer-syntax '{value}': expected a transfer syntax UID or *")
    return value


def accept_dicom(transfer_syntax: str) -> str:
    return f'multipart/related; type="application/dicom"; transfer-syntax={transfer_syntax}'


def resource(item: RetrieveItem) -> str:
    """`studies/S[/series/X[/instances/I]]` (relative to the profile's URL)."""
    path = f"studies/{item.study}"
    if item.series:
        path += f"/series/{item.series}"
        if item.sops:
            path += f"/instances/{item.sops[0]}"
    return path


def item_name(item: RetrieveItem) -> str:
    return "/".join([item.study, *([item.series] if item.series else []), *item.sops])


# --------------------------------------------------------------------------
# Listing and metadata (JSON)


def _json(client: httpx.Client, path: str, what: str, params: dict[str, str] | None = None
          ) -> list[dict[str, Any]]:
    from medimg_cli.dicomweb.client import request

    response = request(client, "GET", path, what=what, params=params,
                       headers={"Accept": "application/dicom+json"})
    if response.status_code == 204 or not response.content.strip():
        return []
    try:
        data = response.json()
    except ValueError:
        raise RemoteError(f"{what}: the answer is not JSON",
                          hint="rerun with -vv to see the exchange") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise RemoteError(f"{what}: expected a JSON array of DICOM JSON objects")
    return data


def list_instances(client: httpx.Client, item: RetrieveItem) -> list[tuple[str, str, str]]:
    """(study, series, SOP instance) of every instance the item covers, by QIDO-RS."""
    path = f"studies/{item.study}" + (f"/series/{item.series}" if item.series else "")
    found = []
    for record in _json(client, path + "/instances", f"list the instances of {item_name(item)}",
                        params={"includefield": "0020000E"}):
        def value(tag: str, rec: dict[str, Any] = record) -> str:
            values = rec.get(tag, {}).get("Value") or [""]
            return str(values[0])

        sop = value("00080018")
        if item.sops and sop not in item.sops:
            continue
        found.append((value("0020000D") or item.study, value("0020000E") or item.series or "",
                      sop))
    return found


def metadata(client: httpx.Client, items: Sequence[RetrieveItem]) -> list[dict[str, Any]]:
    """The DICOM JSON metadata of every instance the items cover."""
    records: list[dict[str, Any]] = []
    for item in items:
        records += _json(client, resource(item) + "/metadata",
                         f"metadata of {item_name(item)}")
    return records


# --------------------------------------------------------------------------
# Reading a part's file meta and layout attributes


def layout_values(head: bytes, layout: Layout) -> dict[str, str]:
    """The layout attributes of a Part 10 file, from its first bytes."""
    from medimg_cli.dimse.receive import read_header
    from medimg_cli.part10 import parse_file_meta

    meta, start = parse_file_meta(head)
    wanted = {t for t in (*layout.tags, 0x0020000D) if t not in (0x00080018, 0x00080016)}
    header = read_header(head[start:], meta[0x0010], tuple(sorted(wanted)))
    names = {tag: name for name, tag in LAYOUT_FIELDS.items()}
    values = {names[tag]: value for tag, value in header.items() if tag in names}
    values["SOPInstanceUID"] = meta[0x0003]
    values["SOPClassUID"] = meta.get(0x0002, "")
    return values


class _PartFile:
    """One part on its way to disk: a `.part` file below `out`, renamed when complete."""

    def __init__(self, out: Path, index: int, headers: dict[str, str] | None = None) -> None:
        self.tmp = out / f".wado-{os.getpid()}-{next(_counter)}{PART_SUFFIX}"
        self.index = index
        self.headers = headers or {}
        self.size = 0
        self.head = bytearray()
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish/discard

    def write(self, data: bytes) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        self.fh.write(data)
        self.size += len(data)

    def finish(self, out: Path, layout: Layout, made: set[Path]) -> Written:
        self.fh.close()
        try:
            values = self._layout_values(layout)
        except Exception as exc:
            raise NotDicomError(f"part {self.index + 1} is not a DICOM file ({exc})") from None
        target = inside(out, layout.relative_path(values))
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        os.replace(self.tmp, target)
        return Written(target, values["SOPInstanceUID"], values.get("StudyInstanceUID", ""),
                       self.size)

    def _layout_values(self, layout: Layout) -> dict[str, str]:
        head_only = self.size <= len(self.head)
        try:
            values = layout_values(bytes(self.head), layout)
            if head_only or all(f in values for f in layout.fields):
                return values
        except Exception:
            if head_only:
                raise
        with open(self.tmp, "rb") as fh:  # a long header: read further in
            return layout_values(fh.read(MAX_HEAD_BYTES), layout)

    def finish_at(self, target: Path, values: dict[str, str]) -> Written:
        """Complete a non-DICOM part (a frame, a rendered image) at a path given in advance."""
        self.fh.close()
        os.replace(self.tmp, target)
        return Written(target, values.get("SOPInstanceUID", ""),
                       values.get("StudyInstanceUID", ""), self.size)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


# --------------------------------------------------------------------------
# Streaming one request


def _chunks(response: httpx.Response, reader: MultipartReader) -> Iterator[bytes]:
    """The body's bytes; a connection that breaks becomes a multipart error."""
    import httpx

    try:
        yield from response.iter_bytes()
    except httpx.TimeoutException:
        raise TruncatedError(f"no data for too long inside part {reader.index + 1}"
                             if not reader.done else "timed out after the last part") from None
    except httpx.TransportError as exc:
        where = f"inside part {reader.index + 1}" if reader.index >= 0 else "before the first part"
        raise TruncatedError(f"the connection broke {where} ({exc})") from None


def _stream(
    client: httpx.Client,
    path: str,
    accept: str,
    what: str,
    out: Path,
    place: Callable[[_PartFile], Written],
    on_written: Callable[[Written], None],
    on_bytes: Callable[[int], None],
    *,
    multipart: bool = True,
) -> int:
    """GET `path` and write each part (or the one body) to disk; `place` renames a part.

    Returns the number of files written; raises on the first fault, after
    removing the broken part.
    """
    import httpx

    from medimg_cli.dicomweb.client import check_response

    try:
        with client.stream("GET", path, headers={"Accept": accept}) as response:
            if response.status_code >= 400:
                response.read()
                check_response(response, what)
            content_type = response.headers.get("content-type", "")
            if not multipart:
                return _stream_single(response, content_type, out, place, on_written, on_bytes)
            reader = MultipartReader(boundary_from_content_type(content_type))
            current: _PartFile | None = None
            try:
                for chunk in _chunks(response, reader):
                    for event in reader.feed(chunk):
                        if isinstance(event, PartData):
                            assert current is not None
                            current.write(event.data)
                            on_bytes(len(event.data))
                        elif isinstance(event, PartStart):
                            current = _PartFile(out, event.index, event.headers)
                        elif isinstance(event, PartEnd):
                            assert current is not None
                            part, current = current, None
                            try:
                                written = place(part)
                            except BaseException:
                                part.discard()
                                raise
                            on_written(written)
                reader.close()
            finally:
                if current is not None:
                    current.discard()
            if reader.parts == 0:
                raise RemoteError(f"{what}: the server sent nothing")
            return reader.parts
    except httpx.TimeoutException:
        raise ConnectError(f"{what}: no answer from {client.base_url} in time",
                           hint="--timeout sets the limit") from None
    except httpx.ConnectError as exc:
        raise ConnectError(f"{what}: cannot connect to {client.base_url}: {exc}",
                           hint="check url in the profile and that the server runs") from None
    except httpx.TransportError as exc:
        raise ConnectError(f"{what}: {type(exc).__name__}: {exc}") from None


def _stream_single(
    response: httpx.Response, content_type: str, out: Path,
    place: Callable[[_PartFile], Written], on_written: Callable[[Written], None],
    on_bytes: Callable[[int], None],
) -> int:
    """A single-part body (a rendered image) to one file."""
    import httpx

    part = _PartFile(out, 0, {"content-type": content_type})
    try:
        try:
            for chunk in response.iter_bytes():
                part.write(chunk)
                on_bytes(len(chunk))
        except httpx.TransportError as exc:
            raise TruncatedError(f"the connection broke during the image ({exc})") from None
        written = place(part)
    except BaseException:
        part.discard()
        raise
    on_written(written)
    return 1


def fetch(
    client: httpx.Client,
    item: RetrieveItem,
    options: WadoOptions,
    out: Path,
    on_written: Callable[[Written], None],
    on_bytes: Callable[[int], None],
    made: set[Path],
) -> None:
    """GET one WADO-RS resource and write each of its instances; raise on the first fault."""
    _stream(client, resource(item), accept_dicom(options.transfer_syntax),
            f"retrieve {item_name(item)}", out,
            lambda part: part.finish(out, options.layout, made), on_written, on_bytes)


# --------------------------------------------------------------------------
# Frames and rendered images (instance level)


_EXTENSIONS = {
    "application/octet-stream": "raw",
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/jp2": "jp2",
    "image/jls": "jls",
    "image/jpx": "jpx",
    "image/dicom-rle": "rle",
}


def extension(content_type: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(media, "bin")


def parse_frames(text: str) -> list[int]:
    """`1,3-5` -> [1, 3, 4, 5] (sorted, distinct, 1-based)."""
    frames: set[int] = set()
    for piece in text.split(","):
        piece = piece.strip()
        first, sep, last = piece.partition("-")
        try:
            lo = int(first)
            hi = int(last) if sep else lo
        except ValueError:
            raise UsageError(f"--frames '{text}': '{piece}' is not a frame number or range",
                             hint="for example --frames 1,3-5") from None
        if lo < 1 or hi < lo or hi - lo > 100_000:
            raise UsageError(f"--frames '{text}': '{piece}' is not a valid range (frames start "
                             "at 1)")
        frames.update(range(lo, hi + 1))
    return sorted(frames)


def values_from_json(record: dict[str, Any]) -> dict[str, str]:
    """The layout attributes from a DICOM JSON record."""
    values: dict[str, str] = {}
    for name, tag in LAYOUT_FIELDS.items():
        element = record.get(f"{tag:08X}") or {}
        first = (element.get("Value") or [None])[0]
        if isinstance(first, dict):
            first = first.get("Alphabetic")
        if first is not None:
            values[name] = str(first)
    return values


def _instance_base(client: httpx.Client, item: RetrieveItem, out: Path, layout: Layout
                   ) -> tuple[Path, dict[str, str]]:
    """Where the instance's file would go by the layout, less its suffix."""
    if not (item.series and item.sops):
        raise UsageError("--frames and --rendered work on one instance: give STUDY SERIES SOP")
    records = _json(client, resource(item) + "/metadata", f"metadata of {item_name(item)}")
    values = values_from_json(records[0]) if records else {}
    values.setdefault("StudyInstanceUID", item.study)
    values.setdefault("SeriesInstanceUID", item.series)
    values["SOPInstanceUID"] = item.sops[0]
    target = inside(out, layout.relative_path(values))
    return target.with_suffix("") if target.suffix == ".dcm" else target, values


def fetch_frames(
    client: httpx.Client, item: RetrieveItem, frames: Sequence[int], options: WadoOptions,
    out: Path, on_written: Callable[[Written], None], on_bytes: Callable[[int], None],
) -> None:
    """Pixel data of the given frames, one file each: `<instance path>.frame-N.<ext>`."""
    base, values = _instance_base(client, item, out, options.layout)
    base.parent.mkdir(parents=True, exist_ok=True)

    def place(part: _PartFile) -> Written:
        if part.index >= len(frames):
            raise MultipartError(f"the server sent more than the {len(frames)} frames asked for")
        kind = part.headers.get("content-type", "application/octet-stream")
        return part.finish_at(base.with_name(
            f"{base.name}.frame-{frames[part.index]}.{extension(kind)}"), values)

    accept = ('multipart/related; type="application/octet-stream"; '
              f"transfer-syntax={options.transfer_syntax}")
    got = _stream(client, resource(item) + "/frames/" + ",".join(map(str, frames)), accept,
                  f"frames of {item_name(item)}", out, place, on_written, on_bytes)
    if got < len(frames):
        raise RemoteError(f"frames of {item_name(item)}: asked for {len(frames)}, got {got}")


def fetch_rendered(
    client: httpx.Client, item: RetrieveItem, accept: str, options: WadoOptions, out: Path,
    on_written: Callable[[Written], None], on_bytes: Callable[[int], None],
) -> None:
    """The rendered instance (image/jpeg, image/png) as `<instance path>.<ext>`."""
    base, values = _instance_base(client, item, out, options.layout)
    base.parent.mkdir(parents=True, exist_ok=True)

    def place(part: _PartFile) -> Written:
        kind = part.headers.get("content-type", "")
        if not kind.lower().startswith("image/"):
            raise RemoteError(f"rendered {item_name(item)}: expected an image, got "
                              f"Content-Type '{kind}'")
        return part.finish_at(base.with_name(f"{base.name}.{extension(kind)}"), values)

    _stream(client, resource(item) + "/rendered", accept, f"rendered {item_name(item)}", out,
            place, on_written, on_bytes, multipart=False)


def retrieve(
    client: httpx.Client,
    items: Sequence[RetrieveItem],
    options: WadoOptions,
    *,
    progress: ProgressCallback | None = None,
    on_file: Callable[[Written], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    profile: str = "",
) -> TransferSummary:
    """Retrieve `items` by WADO-RS; one ItemResult per item; faults become failed items.

    With `options.retries`, a stream that breaks is resumed: the instances the
    item covers are listed (QIDO-RS) and those not yet written are fetched one
    by one; each break uses up one retry. `on_notice` hears about each resume.
    """
    from medimg_cli.dimse.retrieve import RetrieveItem

    summary = TransferSummary(operation="wadoget", profile=profile)
    out = options.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    state = Progress()
    last = [0.0]
    made: set[Path] = set()
    have: set[str] | None = None

    def report(force: bool = False) -> None:
        now = time.monotonic()
        if progress is not None and (force or now - last[0] >= _PROGRESS_EVERY):
            last[0] = now
            progress(state)

    for item in items:
        result = ItemResult(name=item_name(item))
        summary.items.append(result)
        started = time.monotonic()

        def on_bytes(n: int) -> None:
            state.bytes += n
            report()

        written: set[str] = set()

        def on_written(w: Written, result: ItemResult = result,
                       written: set[str] = written) -> None:
            written.add(w.sop_instance_uid)
            result.done += 1
            result.bytes += w.size
            summary.done += 1
            summary.bytes += w.size
            state.done += 1
            state.current = w.sop_instance_uid
            if on_file is not None:
                on_file(w)
            report(force=True)

        try:
            targets: list[RetrieveItem] = [item]
            if options.skip_existing:
                if have is None:
                    from medimg_cli.storage import stored_sop_uids

                    have = stored_sop_uids(out)
                listed = list_instances(client, item)
                result.requested = len(listed)
                missing = [(st, se, sop) for st, se, sop in listed if sop not in have]
                result.skipped = len(listed) - len(missing)
                summary.skipped += result.skipped
                state.skipped += result.skipped
                state.remaining = (state.remaining or 0) + len(missing)
                targets = [RetrieveItem(st, se, (sop,)) for st, se, sop in missing]
            retries = options.retries
            while targets:
                target = targets.pop(0)
                if options.frames:
                    fetch_frames(client, target, options.frames, options, out, on_written,
                                 on_bytes)
                elif options.rendered:
                    fetch_rendered(client, target, options.rendered, options, out, on_written,
                                   on_bytes)
                else:
                    try:
                        fetch(client, target, options, out, on_written, on_bytes, made)
                    except TruncatedError as exc:
                        if retries <= 0:
                            raise
                        retries -= 1
                        done = written | (have or set())
                        resumed = [RetrieveItem(st, se, (sop,))
                                   for st, se, sop in list_instances(client, target)
                                   if sop not in done]
                        targets = resumed + targets
                        if on_notice is not None:
                            on_notice(f"{item_name(target)}: {exc.message}; resuming with the "
                                      f"{len(resumed)} instances not yet saved")
                        continue
                if options.skip_existing and state.remaining:
                    state.remaining -= 1
            result.status = "done"
        except (ConnectError, RefusedError):
            raise
        except RemoteError as exc:
            result.failed += 1
            summary.failed += 1
            state.failed += 1
            result.status = "failed"
            result.message = f"{item_name(item)}: {exc.message}"
            log.info("wadoget %s failed: %s", item_name(item), exc.message)
        finally:
            result.seconds = time.monotonic() - started
        if not options.skip_existing:
            result.requested = result.done + result.failed
        report(force=True)
    return summary.finish()
