"""HTTP exchanges into the `--trace` file: httpx event hooks.

`event_hooks()` gives `open_client` a request hook (method, URL, headers, a
text/JSON/form body up to `trace.BODY_LIMIT`) and a response hook (status,
headers). A response body is not read by the hook: the stream is wrapped so
that the first `BODY_LIMIT` bytes are copied as the caller reads them, and
written to the trace when the response closes (streamed QIDO answers stay
streamed). Multipart and DICOM bodies are only described. Everything goes
through the trace's Redactor: secrets always hidden, PHI hashed.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from medimg_cli import trace as tracing

if TYPE_CHECKING:
    import httpx


def event_hooks() -> dict[str, list[Any]]:
    """httpx `event_hooks` for a client ({} when no trace is open)."""
    if tracing.current() is None:
        return {}
    return {"request": [_request], "response": [_response]}


def _request(request: httpx.Request) -> None:
    import httpx

    trace = tracing.current()
    if trace is None:
        return
    r = trace.redactor
    lines = tracing.http_headers(request.headers.multi_items(), r)
    content_type = request.headers.get("content-type", "")
    length = request.headers.get("content-length")
    total = int(length) if length and length.isdigit() else None
    try:
        body = request.content
    except httpx.RequestNotRead:
        body = b""
        if total != 0:
            lines.append(f"    <body: {content_type or 'unknown type'}, streamed, not traced>")
    if body:
        lines += tracing.http_body(body, content_type, r, len(body))
    trace.entry("HTTP", f"> {request.method} {r.url(str(request.url))}", lines)


def _response(response: httpx.Response) -> None:
    trace = tracing.current()
    if trace is None:
        return
    r = trace.redactor
    request = response.request
    lines = tracing.http_headers(response.headers.multi_items(), r)
    title = (f"< {response.status_code} {response.reason_phrase} for {request.method} "
             f"{r.url(str(request.url))}")
    trace.entry("HTTP", title, lines)
    content_type = response.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip().lower()
    if request.method == "HEAD" or response.status_code in (204, 304):
        return
    length = response.headers.get("content-length")
    total = int(length) if length and length.isdigit() else None
    if kind.startswith("multipart/") or kind in ("application/dicom",
                                                 "application/octet-stream"):
        trace.entry("HTTP", f"< body of {request.method} {r.url(str(request.url))}",
                    [f"    <body: {kind}, {total if total is not None else 'unknown'} bytes, "
                     "not traced>"])
        return
    encoding = response.headers.get("content-encoding", "").lower()
    response.stream = _tee_class()(response.stream, response, encoding, total)


_TEE: Any = None


def _tee_class() -> Any:
    global _TEE
    if _TEE is not None:
        return _TEE
    import httpx

    class Tee(httpx.SyncByteStream):
        """The response stream as it was, with its first BODY_LIMIT bytes copied."""

        def __init__(self, stream: Any, response: httpx.Response, encoding: str,
                     total: int | None) -> None:
            self.stream = stream
            self.response = response
            self.encoding = encoding
            self.total = total
            self.copied = bytearray()
            self.size = 0
            self.written = False

        def __iter__(self) -> Any:
            for chunk in self.stream:
                self.size += len(chunk)
                if len(self.copied) < tracing.BODY_LIMIT * 4:
                    self.copied += chunk[: tracing.BODY_LIMIT * 4 - len(self.copied)]
                yield chunk
            self._write()

        def close(self) -> None:
            try:
                self.stream.close()
            finally:
                self._write()

        def _write(self) -> None:
            if self.written:
                return
            self.written = True
            trace = tracing.current()
            if trace is None:
                return
            request = self.response.request
            data = bytes(self.copied)
            note: list[str] = []
            if self.encoding in ("gzip", "deflate", "x-gzip"):
                try:
                    data = zlib.decompressobj(47).decompress(data, tracing.BODY_LIMIT + 1)
                except zlib.error:
                    data, note = b"", [f"    <{self.encoding} body, not traced>"]
            elif self.encoding not in ("", "identity"):
                data, note = b"", [f"    <{self.encoding} body, not traced>"]
            content_type = self.response.headers.get("content-type", "")
            lines = note or tracing.http_body(data, content_type, trace.redactor,
                                              self.total if not self.encoding else None)
            if not lines:
                return
            trace.entry("HTTP", f"< body of {request.method} "
                        f"{trace.redactor.url(str(request.url))} ({self.size} bytes on the wire)",
                        lines)

    _TEE = Tee
    return Tee
