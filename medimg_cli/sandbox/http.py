"""The sandbox's HTTP side: DICOMweb under /dicom-web, FHIR R4 under /fhir.

One stdlib ThreadingHTTPServer (HTTP/1.1, keep-alive). DICOMweb answers as
Orthanc's DICOMweb plugin does for the same data: the same default attributes
per level in QIDO-RS, ``[]`` for no match, ``multipart/related;
type="application/dicom"`` for WADO-RS, and STOW-RS answering 200 when all
instances were stored and 409 when some failed (listing both). Unlike Orthanc,
a query parameter that names no DICOM attribute is a 400, not ignored.
Responses are streamed: files go out in 256 KiB reads behind a computed
Content-Length.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from medimg_cli.sandbox.matching import Key, Query, QueryError, run_query
from medimg_cli.sandbox.store import Archive, InstanceRef, NotStorable, split_part10

CHUNK = 256 * 1024
MAX_STOW_BYTES = 4 << 30

# Orthanc's DICOMweb plugin's default attributes per level (measured with Orthanc 1.10).
_STUDY_FIELDS = ("00080020", "00080030", "00080050", "00080061", "00080090", "00100010",
                 "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206",
                 "00201208")
_SERIES_FIELDS = ("00080020", "00080030", "00080050", "00080060", "00080090", "0008103E",
                  "00100010", "00100020", "00100030", "00100040", "0020000D", "0020000E",
                  "00200010", "00200011", "00201209")
_INSTANCE_FIELDS = ("00080016", "00080018", "00080020", "00080030", "00080050", "00080060",
                    "00080090", "0008103E", "00100010", "00100020", "00100030", "00100040",
                    "0020000D", "0020000E", "00200010", "00200011", "00200013", "00280010",
                    "00280011", "00280100")
_DEFAULT_FIELDS = {"STUDY": _STUDY_FIELDS, "SERIES": _SERIES_FIELDS, "IMAGE": _INSTANCE_FIELDS}
_QIDO_CONTROL = frozenset({"limit", "offset", "fuzzymatching", "includefield", "orderby"})
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@lru_cache(maxsize=1024)
def attribute(name: str) -> tuple[str, str]:
    """(tag as 8 hex digits, VR) of a keyword or ``ggggeeee`` / ``gggg,eeee``; HttpError 400."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    text = name.strip()
    hex_text = text.replace(",", "").replace("(", "").replace(")", "")
    is_hex = re.fullmatch(r"[0-9A-Fa-f]{8}", hex_text) is not None
    tag: int | None = int(hex_text, 16) if is_hex else tag_for_keyword(text)
    if tag is None:
        raise HttpError(400, f"'{name}' is not a DICOM attribute keyword or tag")
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        vr = "UN"
    if len(vr) != 2:
        vr = "US" if "US" in vr else "OB" if "OB" in vr else "UN"
    return f"{tag:08X}", vr


def _qido_value(vr: str, value: str) -> str:
    """QIDO-RS value -> matching value: a comma separates list items (PS3.18 8.3.4.1)."""
    if vr in ("DA", "TM", "DT", "UI", "CS") or "," in value:
        return value.replace(",", "\\")
    return value


class SandboxHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "medimg-sandbox"
    timeout = 120  # an idle keep-alive connection is closed after this many seconds
    server: SandboxHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is written by `_finish`

    # -- plumbing

    def _dispatch(self, method: str) -> None:
        started = time.perf_counter()
        self._status = 0
        url = urlsplit(self.path)
        path = unquote(url.path)
        try:
            if path.startswith("/dicom-web"):
                self._dicomweb(method, path[len("/dicom-web"):].strip("/"), url.query)
            elif path.startswith("/fhir"):
                from medimg_cli.sandbox.fhir import handle

                status, body, content_type, headers = handle(
                    self.server.archive, method, path[len("/fhir"):].strip("/"), url.query,
                    self._body() if method in ("POST", "PUT") else b"", self._base("/fhir"),
                    self.headers)
                self._send_bytes(status, body, content_type, headers)
            elif path in ("", "/"):
                self._send_json(200, {"name": "medimg sandbox", "dicomweb": "/dicom-web",
                                      "fhir": "/fhir"})
            else:
                raise HttpError(404, f"nothing at {path}; try /dicom-web or /fhir")
        except HttpError as exc:
            if method in ("POST", "PUT"):  # the body may be unread: do not reuse the connection
                self.close_connection = True
            self._send_error(exc.status, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug: answer 500, keep serving
            self._send_error(500, f"internal error: {type(exc).__name__}: {exc}")
        ms = (time.perf_counter() - started) * 1000
        self.server.say(f"http: {self.client_address[0]} {method} {self.path} -> "
                        f"{self._status} ({ms:.0f} ms)")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _base(self, root: str) -> str:
        host = self.headers.get("Host") or (
            f"{self.server.server_address[0]!s}:{self.server.server_address[1]}")
        return f"http://{host}{root}"

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return b"".join(self._chunks())
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_STOW_BYTES:
            raise HttpError(413, "request body too large")
        return self.rfile.read(length) if length else b""

    def _chunks(self) -> Iterator[bytes]:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                line = self.rfile.readline(1024).strip()
                size = int(line.split(b";")[0] or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline(8)
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                chunk = self.rfile.read(min(CHUNK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    def _start(self, status: int, content_type: str, length: int,
               headers: dict[str, str] | None = None) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def _send_bytes(self, status: int, body: bytes, content_type: str,
                    headers: dict[str, str] | None = None) -> None:
        self._start(status, content_type, len(body), headers)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, doc: Any, content_type: str = "application/json") -> None:
        body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        self._send_bytes(status, body, content_type)

    def _send_error(self, status: int, message: str) -> None:
        if self._status:  # headers went out already: nothing sensible to add
            self.close_connection = True
            return
        self._send_json(status, {"HttpStatus": status, "Message": message})

    # -- DICOMweb

    def _dicomweb(self, method: str, path: str, query: str) -> None:
        parts = [p for p in path.split("/") if p]
        if method == "POST":
            if parts in (["studies"],) or (len(parts) == 2 and parts[0] == "studies"):
                self._stow(parts[1] if len(parts) == 2 else None)
                return
            raise HttpError(405, "STOW-RS takes POST /studies or /studies/{study}")
        if method != "GET":
            raise HttpError(405, f"{method} is not supported here")
        names = parts[0::2]
        uids = parts[1::2]
        for uid in uids:
            if uid not in ("metadata", "frames", "rendered", "bulk") and not _UID.match(uid) \
                    and not (names[-1] in ("frames", "bulk") and uid == parts[-1]):
                raise HttpError(400, f"'{uid}' is not a UID")
        shape = "/".join(names)
        # QIDO-RS
        qido = {"studies": ("STUDY", {}), "series": ("SERIES", {}), "instances": ("IMAGE", {}),
                "studies/series": ("SERIES", {"0020000D": 0}),
                "studies/instances": ("IMAGE", {"0020000D": 0}),
                "studies/series/instances": ("IMAGE", {"0020000D": 0, "0020000E": 1})}
        if len(parts) % 2 == 1 and shape in qido:
            level, fixed = qido[shape]
            self._qido(level, {tag: uids[i] for tag, i in fixed.items()}, query)
            return
        # WADO-RS
        if parts and parts[-1] == "metadata" and len(parts) in (3, 5, 7) and shape in (
                "studies/metadata", "studies/series/metadata",
                "studies/series/instances/metadata"):
            self._metadata(parts[1:-1:2])
            return
        if parts and parts[-1] == "rendered" and shape in (
                "studies/series/instances/rendered", "studies/series/instances/frames/rendered"):
            self._rendered(parts[1], parts[3], parts[5], parts[7] if len(parts) == 9 else "1",
                           query)
            return
        if len(parts) == 8 and shape == "studies/series/instances/bulk":
            self._bulk(parts[1], parts[3], parts[5], parts[7])
            return
        if len(parts) == 8 and parts[6] == "frames":
            self._frames(parts[1], parts[3], parts[5], parts[7])
            return
        if len(parts) % 2 == 0 and shape in ("studies", "studies/series",
                                             "studies/series/instances"):
            self._wado(uids)
            return
        raise HttpError(404, f"no DICOMweb resource at /{path}")

    def _qido(self, level: str, fixed: dict[str, str], query: str) -> None:
        limit: int | None = None
        offset = 0
        keys: dict[str, Key] = {}
        include: list[str] = []
        fuzzy = False
        try:
            params = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise HttpError(400, f"the query string '{query}' is not valid") from None
        for name, value in params:
            lower = name.lower()
            if lower in ("limit", "offset"):
                if not value.isdigit():
                    raise HttpError(400, f"{name} must be a non-negative integer, not '{value}'")
                if lower == "limit":
                    limit = int(value)
                else:
                    offset = int(value)
            elif lower == "includefield":
                for field in value.split(","):
                    if field.strip() and field.strip().lower() != "all":
                        include.append(attribute(field)[0])
            elif lower == "fuzzymatching":
                fuzzy = value.lower() == "true"
            elif lower in _QIDO_CONTROL:
                continue
            else:
                if "." in name:
                    raise HttpError(400, f"'{name}': sequence matching is not supported")
                tag, vr = attribute(name)
                keys[tag] = Key(tag, vr, _qido_value(vr, value))
        for tag, uid in fixed.items():
            keys[tag] = Key(tag, "UI", uid)
        for tag in (*_DEFAULT_FIELDS[level], *include):
            if tag not in keys:
                keys[tag] = Key(tag, attribute(tag)[1], "")
        q = Query(level, list(keys.values()), fuzzy=fuzzy)
        base = self._base("/dicom-web")
        answers = []
        try:
            for answer in run_query(self.server.archive, q, aet=self.server.aet, limit=limit,
                                    offset=offset):
                answer["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
                url = f"{base}/studies/{_first(answer, '0020000D')}"
                if level in ("SERIES", "IMAGE"):
                    url += f"/series/{_first(answer, '0020000E')}"
                if level == "IMAGE":
                    url += f"/instances/{_first(answer, '00080018')}"
                answer["00081190"] = {"vr": "UR", "Value": [url]}
                answers.append(dict(sorted(answer.items())))
        except QueryError as exc:
            raise HttpError(400, str(exc)) from None
        self._send_json(200, answers, "application/dicom+json")

    def _refs(self, uids: list[str]) -> list[InstanceRef]:
        columns = ("study_uid", "series_uid", "sop_uid")
        where = " AND ".join(f"{columns[i]} = ?" for i in range(len(uids)))
        refs = self.server.archive.instance_refs(f"WHERE {where}", uids)
        if not refs:
            raise HttpError(404, "no such " + ("study", "series", "instance")[len(uids) - 1])
        return refs

    def _wado(self, uids: list[str]) -> None:
        accept = self.headers.get("Accept") or "*/*"
        wanted_syntax = None
        match = re.search(r'transfer-syntax\s*=\s*"?([0-9.*]+)"?', accept)
        if match:
            wanted_syntax = match.group(1)
        if not any(kind in accept for kind in ("application/dicom", "*/*", "multipart/related")):
            raise HttpError(406, f"cannot answer Accept: {accept} (only "
                            'multipart/related; type="application/dicom")')
        refs = self._refs(uids)
        if wanted_syntax not in (None, "*"):
            bad = [r for r in refs if r.transfer_syntax != wanted_syntax]
            if bad:
                raise HttpError(406, f"the sandbox does not transcode: {bad[0].sop_uid} is "
                                f"stored as {bad[0].transfer_syntax}; ask for transfer-syntax=*")
        boundary = uuid.uuid4().hex
        heads = [
            (f"--{boundary}\r\nContent-Type: application/dicom\r\n"
             f"Content-Length: {ref.size}\r\n\r\n").encode("ascii") for ref in refs]
        tail = f"--{boundary}--\r\n".encode("ascii")
        length = sum(len(h) + ref.size + 2 for h, ref in zip(heads, refs, strict=True)) + len(tail)
        self._start(200, f'multipart/related; type="application/dicom"; boundary={boundary}',
                    length)
        for head, ref in zip(heads, refs, strict=True):
            self.wfile.write(head)
            with open(ref.path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    self.wfile.write(chunk)
            self.wfile.write(b"\r\n")
        self.wfile.write(tail)

    def _metadata(self, uids: list[str]) -> None:
        refs = self._refs(uids)
        base = self._base("/dicom-web")
        docs = []
        sops = [r.sop_uid for r in refs]
        rows = {}
        for i in range(0, len(sops), 500):
            chunk = sops[i : i + 500]
            for sop, blob in self.server.archive.query(
                    f"SELECT sop_uid, json FROM instances WHERE sop_uid IN "
                    f"({','.join('?' * len(chunk))})", chunk):
                rows[sop] = json.loads(blob)
        for ref in refs:
            doc = rows.get(ref.sop_uid, {})
            doc["7FE00010"] = {"vr": "OW", "BulkDataURI": (
                f"{base}/studies/{ref.study_uid}/series/{ref.series_uid}/instances/"
                f"{ref.sop_uid}/bulk/7fe00010")}
            docs.append(dict(sorted(doc.items())))
        self._send_json(200, docs, "application/dicom+json")

    def _frames(self, study: str, series: str, sop: str, frame_list: str) -> None:
        try:
            numbers = [int(f) for f in frame_list.split(",")]
        except ValueError:
            raise HttpError(400, f"'{frame_list}' is not a list of frame numbers") from None
        (ref,) = self._refs([study, series, sop])
        frames, content_type = read_frames(ref.path)
        for n in numbers:
            if not 1 <= n <= len(frames):
                raise HttpError(404, f"frame {n} does not exist (the instance has "
                                f"{len(frames)})")
        boundary = uuid.uuid4().hex
        body = b"".join(
            f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")
            + frames[n - 1] + b"\r\n" for n in numbers) + f"--{boundary}--\r\n".encode("ascii")
        self._send_bytes(200, body, f'multipart/related; type="{content_type}"; '
                         f"boundary={boundary}")

    def _bulk(self, study: str, series: str, sop: str, tag: str) -> None:
        """The pixel data a metadata BulkDataURI points at (the only bulk data served)."""
        if tag.lower() != "7fe00010":
            raise HttpError(404, f"no bulk data {tag} (only the pixel data, 7fe00010)")
        from pydicom import dcmread

        (ref,) = self._refs([study, series, sop])
        ds = dcmread(ref.path)
        if "PixelData" not in ds:
            raise HttpError(404, "the instance has no pixel data")
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
                .encode("ascii") + bytes(ds.PixelData) + f"\r\n--{boundary}--\r\n".encode())
        self._send_bytes(200, body, 'multipart/related; type="application/octet-stream"; '
                         f"boundary={boundary}")

    def _rendered(self, study: str, series: str, sop: str, frame: str, query: str) -> None:
        from medimg_cli.sandbox.render import RenderError, jpeg, png, render

        accept = (self.headers.get("Accept") or "*/*").lower()
        kind = "image/png" if "image/png" in accept and "image/jpeg" not in accept.split(
            "image/png")[0] else "image/jpeg"
        if not any(t in accept for t in ("image/png", "image/jpeg", "image/*", "*/*")):
            raise HttpError(406, f"cannot render as {accept}: image/jpeg or image/png")
        if not frame.isdigit():
            raise HttpError(400, f"'{frame}' is not a frame number")
        window: tuple[float, float] | None = None
        for name, value in parse_qsl(query):
            if name == "window":
                try:
                    center, width_text = value.split(",")[:2]
                    window = (float(center), float(width_text))
                except ValueError:
                    raise HttpError(400, f"window='{value}' is not center,width[,function]"
                                    ) from None
        (ref,) = self._refs([study, series, sop])
        try:
            width, height, channels, pixels = render(ref.path, int(frame), window)
        except RenderError as exc:
            raise HttpError(400 if "does not exist" not in str(exc) else 404, str(exc)) from None
        body = (png if kind == "image/png" else jpeg)(width, height, channels, pixels)
        self._send_bytes(200, body, kind)

    # -- STOW-RS

    def _stow(self, study: str | None) -> None:
        from medimg_cli.dicomweb.multipart import (
            MultipartError,
            MultipartReader,
            PartData,
            PartEnd,
            PartStart,
            boundary_from_content_type,
        )

        content_type = self.headers.get("Content-Type") or ""
        if not content_type.lower().startswith("multipart/related"):
            self._body()  # drain, so the connection stays usable
            raise HttpError(415, f"STOW-RS takes multipart/related, not '{content_type}'")
        try:
            reader = MultipartReader(boundary_from_content_type(content_type))
        except MultipartError as exc:
            self._body()
            raise HttpError(400, exc.message) from None
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        base = self._base("/dicom-web")
        part_type = ""
        buffer = bytearray()

        def finish_part() -> None:
            media = part_type.split(";")[0].strip().lower()
            if media not in ("application/dicom", ""):
                failed.append(_failed_item("", "", 0xC000))
                self.server.say(f"http: STOW-RS part of type '{part_type}' refused")
                return
            try:
                meta, _ = split_part10(bytes(buffer))
                if study and _study_of(bytes(buffer)) != study:
                    failed.append(_failed_item(meta[0x0002], meta[0x0003], 0xA900))
                    return
                _, sop_class, sop_uid = self.server.archive.store_part10(bytes(buffer))
            except NotStorable as exc:
                failed.append(_failed_item("", "", 0xC000))
                self.server.say(f"http: STOW-RS part refused: {exc}")
                return
            except OSError:
                failed.append(_failed_item("", "", 0xA700))
                return
            row = self.server.archive.query(
                "SELECT study_uid, series_uid FROM instances WHERE sop_uid = ?", (sop_uid,))
            url = (f"{base}/studies/{row[0][0]}/series/{row[0][1]}/instances/{sop_uid}"
                   if row else "")
            stored.append({"00081150": {"vr": "UI", "Value": [sop_class]},
                           "00081155": {"vr": "UI", "Value": [sop_uid]},
                           "00081190": {"vr": "UR", "Value": [url]}})

        try:
            for chunk in self._chunks():
                for event in reader.feed(chunk):
                    if isinstance(event, PartStart):
                        part_type = event.headers.get("content-type", "")
                        buffer.clear()
                    elif isinstance(event, PartData):
                        buffer += event.data
                    elif isinstance(event, PartEnd):
                        finish_part()
            reader.close()
        except MultipartError as exc:
            raise HttpError(400, f"the multipart body is malformed: {exc.message}") from None
        answer: dict[str, Any] = {}
        if study:
            answer["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        if stored:
            answer["00081199"] = {"vr": "SQ", "Value": stored}
        if not stored and not failed:
            raise HttpError(400, "the multipart body holds no part")
        self._send_json(409 if failed else 200, answer, "application/dicom+json")


def _failed_item(sop_class: str, sop_uid: str, reason: int) -> dict[str, Any]:
    item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [reason]}}
    item["00081150"] = {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"}
    item["00081155"] = {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"}
    return item


def _study_of(data: bytes) -> str:
    from medimg_cli.sandbox.store import header_json, text

    meta, offset = split_part10(data)
    return text(header_json(data[offset:], meta[0x0010]), "0020000D")


def _first(record: dict[str, Any], tag: str) -> str:
    values = (record.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def read_frames(path: Path) -> tuple[list[bytes], str]:
    """The frames of an instance: raw pixel bytes per frame, and their content type."""
    from pydicom import dcmread

    ds = dcmread(path)
    if "PixelData" not in ds:
        raise HttpError(404, "the instance has no pixel data")
    syntax = ds.file_meta.TransferSyntaxUID
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if syntax.is_encapsulated:
        from pydicom.encaps import generate_frames

        frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        return frames, f"application/octet-stream; transfer-syntax={syntax}"
    # uncompressed frames are served as Explicit VR Little Endian, as Orthanc labels them
    size = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
            * int(ds.BitsAllocated) // 8)
    data = bytes(ds.PixelData)
    return ([data[i * size : (i + 1) * size] for i in range(count)],
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1")


class SandboxHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], archive: Archive, say: Callable[[str], None],
                 aet: str) -> None:
        super().__init__(address, SandboxHandler)
        self.archive = archive
        self.say = say
        self.aet = aet

    def get_request(self) -> Any:
        import socket

        conn, address = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address


def HttpServer(archive: Archive, host: str, port: int, say: Callable[[str], None],
               *, aet: str = "SANDBOX") -> SandboxHttpServer:
    """The HTTP server, bound (OSError when the port is taken); call serve_forever()."""
    return SandboxHttpServer((host, port), archive, say, aet)
