"""An incremental reader of `multipart/related` bodies (RFC 2046 5.1, RFC 2387).

Feed it the body in chunks of any size as they arrive; it returns events: a
part's headers (`PartStart`), its body in pieces (`PartData`), and its end
(`PartEnd`). It never holds more of a part than one fed chunk plus the length
of the delimiter, so a caller can stream each part to disk whatever its size.

Faults raise a `MultipartError` subclass (exit code 5, like any remote
failure): `BoundaryError` (no or wrong boundary), `TruncatedError` (the stream
ended inside a part), `PartHeaderError` (malformed part headers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medimg_cli.errors import RemoteError

MAX_HEADER_BYTES = 16 * 1024
# How much may come before the first delimiter. DICOMweb servers send no
# preamble; a body without the announced boundary should fail early, not
# after reading a whole study.
MAX_PREAMBLE_BYTES = 64 * 1024


class MultipartError(RemoteError):
    """The multipart body is not what its Content-Type announced."""


class BoundaryError(MultipartError):
    """No boundary in the Content-Type, or the body does not use it."""


class TruncatedError(MultipartError):
    """The stream ended before the closing delimiter."""


class PartHeaderError(MultipartError):
    """A part's header block is malformed or too large."""


@dataclass(frozen=True)
class PartStart:
    """A new part begins; `headers` have lower-case names."""

    index: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartData:
    """The next bytes of the current part's body."""

    index: int
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part is complete."""

    index: int


Event = PartStart | PartData | PartEnd

_BOUNDARY_PARAM = re.compile(r';\s*boundary\s*=\s*(?:"([^"]*)"|([^;\s]+))', re.IGNORECASE)


def boundary_from_content_type(content_type: str) -> str:
    """The boundary parameter of a `multipart/...` Content-Type (quoted or not)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not media.startswith("multipart/"):
        raise BoundaryError(f"expected a multipart response, got Content-Type '{content_type}'")
    match = _BOUNDARY_PARAM.search(content_type)
    boundary = (match.group(1) if match and match.group(1) is not None
                else match.group(2) if match else None)
    if not boundary or len(boundary) > 200:
        raise BoundaryError(f"no usable boundary in Content-Type '{content_type}'")
    return boundary


def parse_headers(block: bytes, index: int) -> dict[str, str]:
    """A part's header lines as a dict (lower-case names; folded lines joined)."""
    headers: dict[str, str] = {}
    last: str | None = None
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise PartHeaderError(f"part {index + 1}: header is not text") from None
    for line in text.split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and last is not None:
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or any(c in name for c in " \t"):
            raise PartHeaderError(f"part {index + 1}: malformed header line {line[:80]!r}")
        headers[name] = value.strip()
        last = name
    return headers


class MultipartReader:
    """Parse a multipart body incrementally: `feed(chunk)` -> events; `close()` at EOF."""

    _PREAMBLE, _DELIMITER_LINE, _HEADERS, _BODY, _DONE = range(5)

    def __init__(self, boundary: str) -> None:
        if not boundary:
            raise BoundaryError("empty multipart boundary")
        self.boundary = boundary
        self._dash = b"--" + boundary.encode("latin-1")
        self._delim = b"\r\n" + self._dash
        self._buf = b""
        self._state = self._PREAMBLE
        self._seen = 0  # bytes consumed before the first delimiter
        self.index = -1  # the current (or last) part
        self.parts = 0  # complete parts

    @property
    def done(self) -> bool:
        """True once the closing delimiter was seen."""
        return self._state == self._DONE

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse `chunk`; return the events it completes."""
        if self._state == self._DONE:
            return []  # the epilogue: ignored
        self._buf = self._buf + chunk if self._buf else bytes(chunk)
        events: list[Event] = []
        while True:
            if self._state == self._PREAMBLE:
                if not self._preamble():
                    break
            elif self._state == self._DELIMITER_LINE:
                if not self._delimiter_line():
                    break
            elif self._state == self._HEADERS:
                if not self._headers(events):
                    break
            elif self._state == self._BODY:
                if not self._body(events):
                    break
            else:
                self._buf = b""
                break
        return events

    def close(self) -> None:
        """The stream ended: raise unless the closing delimiter was seen."""
        if self._state == self._DONE:
            return
        if self._state == self._PREAMBLE:
            raise BoundaryError(
                f"the body never uses the boundary '{self.boundary}' its Content-Type announced")
        if self._state in (self._HEADERS, self._BODY):
            raise TruncatedError(f"the stream ended inside part {self.index + 1}")
        raise TruncatedError(f"the stream ended after part {self.parts} "
                             "without the closing delimiter")

    # --- states: each returns True when it made progress and may go on

    def _preamble(self) -> bool:
        buf = self._buf
        if buf.startswith(self._dash):
            at = 0
        else:
            found = buf.find(self._delim)
            if found < 0:
                keep = len(self._delim) - 1
                self._seen += max(len(buf) - keep, 0)
                if self._seen > MAX_PREAMBLE_BYTES:
                    raise BoundaryError(
                        f"no multipart boundary '{self.boundary}' in the first "
                        f"{MAX_PREAMBLE_BYTES // 1024} KB of the body")
                if len(buf) > keep:
                    self._buf = buf[-keep:]
                return False
            at = found + 2
        self._buf = buf[at + len(self._dash):]
        self._state = self._DELIMITER_LINE
        return True

    def _delimiter_line(self) -> bool:
        """After `--boundary`: `--` (close) or transport padding and CRLF."""
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf.startswith(b"--"):
            self._state = self._DONE
            self._buf = b""
            return True
        end = buf.find(b"\r\n")
        if end < 0:
            waiting = not buf[:-1].strip(b" \t") and buf[-1:] in (b" ", b"\t", b"\r")
            if len(buf) > 256 or not waiting:
                raise BoundaryError(f"after part {self.parts}: bad delimiter line "
                                    f"{bytes(buf[:40])!r}")
            return False
        if buf[:end].strip(b" \t"):
            raise BoundaryError(f"after part {self.parts}: bad delimiter line "
                                f"{bytes(buf[:min(end, 40)])!r}")
        self._buf = buf[end + 2:]
        self.index += 1
        self._state = self._HEADERS
        return True

    def _headers(self, events: list[Event]) -> bool:
        buf = self._buf
        if buf.startswith(b"\r\n"):
            block, rest = b"", buf[2:]
        else:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise PartHeaderError(f"part {self.index + 1}: header block over "
                                          f"{MAX_HEADER_BYTES // 1024} KB")
                return False
            if end > MAX_HEADER_BYTES:
                raise PartHeaderError(f"part {self.index + 1}: header block over "
                                      f"{MAX_HEADER_BYTES // 1024} KB")
            block, rest = buf[:end], buf[end + 4:]
        events.append(PartStart(self.index, parse_headers(block, self.index)))
        self._buf = rest
        self._state = self._BODY
        return True

    def _body(self, events: list[Event]) -> bool:
        buf = self._buf
        found = buf.find(self._delim)
        if found < 0:
            keep = len(self._delim) - 1
            if len(buf) > keep:
                events.append(PartData(self.index, buf[:-keep]))
                self._buf = buf[-keep:]
            return False
        if found:
            events.append(PartData(self.index, buf[:found]))
        events.append(PartEnd(self.index))
        self.parts += 1
        self._buf = buf[found + len(self._delim):]
        self._state = self._DELIMITER_LINE
        return True
