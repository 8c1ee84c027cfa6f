"""Shareable traces (`--trace FILE`) and the redaction of PHI and secrets.

A trace is a text file of timestamped entries: association requests and
answers, DIMSE command sets and identifiers, HTTP requests and responses. It
is written to be attached to a vendor ticket, so by default:

- PHI (patient names, IDs, birth dates, accession numbers, addresses,
  telephone numbers, physicians' names, ...) is replaced by `<PHI:1a2b3c>`: a
  salted HMAC of the value, the salt random per trace, so equal values give
  equal hashes within one trace (matching stays possible) and nothing across
  traces. `--no-redact` keeps the values.
- Secrets (Authorization and cookie headers, API keys, tokens, passwords and
  passcodes in headers, URLs, forms and JSON) are always `<secret>`.

The same `Redactor` filters the `-vv` log. This module knows nothing of the
command line; the DIMSE and HTTP layers feed it through `current()`.
Worker processes find the trace through the environment (`MEDIMG_TRACE_*`)
and append to the same file with the same salt.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

ENV_FILE = "MEDIMG_TRACE_FILE"
ENV_SALT = "MEDIMG_TRACE_SALT"
ENV_REDACT = "MEDIMG_TRACE_REDACT"
BODY_LIMIT = 4096  # bytes of an HTTP body written to a trace
SECRET = "<secret>"

# PHI attributes: tag (as in DICOM JSON and QIDO keys) -> keyword.
PHI_TAGS: dict[str, str] = {
    "00080050": "AccessionNumber",
    "00080080": "InstitutionName",
    "00080081": "InstitutionAddress",
    "00080090": "ReferringPhysicianName",
    "00080092": "ReferringPhysicianAddress",
    "00080094": "ReferringPhysicianTelephoneNumbers",
    "00081048": "PhysiciansOfRecord",
    "00081050": "PerformingPhysicianName",
    "00081060": "NameOfPhysiciansReadingStudy",
    "00081070": "OperatorsName",
    "00100010": "PatientName",
    "00100020": "PatientID",
    "00100021": "IssuerOfPatientID",
    "00100030": "PatientBirthDate",
    "00100032": "PatientBirthTime",
    "00101000": "OtherPatientIDs",
    "00101001": "OtherPatientNames",
    "00101002": "OtherPatientIDsSequence",
    "00101005": "PatientBirthName",
    "00101040": "PatientAddress",
    "00101060": "PatientMotherBirthName",
    "00102154": "PatientTelephoneNumbers",
    "00102155": "PatientTelecomInformation",
    "00104000": "PatientComments",
    "00321032": "RequestingPhysician",
    "00321033": "RequestingService",
    "00400006": "ScheduledPerformingPhysicianName",
    "0040A123": "PersonName",
}
PHI_KEYWORDS = frozenset(PHI_TAGS.values())
# FHIR (and other JSON) keys whose values are PHI.
_PHI_JSON_KEYS = frozenset({
    "family", "given", "prefix", "suffix", "birthDate", "telecom", "address", "line",
    "city", "postalCode", "district", "identifier", "name", "deceasedDateTime",
    "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
})
# Keys (headers, query parameters, form fields, JSON keys) that hold secrets.
_SECRET_WORDS = ("token", "secret", "password", "passwd", "passcode", "api-key", "api_key",
                 "apikey", "authorization", "cookie", "assertion", "session", "signature",
                 "credential")
_SECRET_EXACT = frozenset({"key", "code", "code_verifier", "sig", "x-api-key", "jwt",
                           "device_code", "user_code", "state", "nonce"})


# OAuth metadata and token answers name secrets without holding one:
# token_endpoint, id_token_signing_alg_values_supported, token_type, client_assertion_type.
_NOT_SECRET_SUFFIXES = ("_endpoint", "_supported", "_uri", "_type", "_type_hint")


def is_secret_key(key: str) -> bool:
    k = key.strip().lower()
    if k.endswith(_NOT_SECRET_SUFFIXES):
        return False
    return k in _SECRET_EXACT or any(word in k for word in _SECRET_WORDS)


# FHIR search parameters whose values are PHI (modifiers and chains included:
# name:exact, subject:Patient.identifier).
_PHI_FHIR_PARAMS = frozenset({
    "name", "family", "given", "birthdate", "identifier", "phone", "email", "telecom",
    "address", "address-city", "address-postalcode", "address-state", "patient", "subject",
    "phonetic", "death-date",
})


def _phi_fhir_param(key: str) -> bool:
    return any(part.split(":")[0] in _PHI_FHIR_PARAMS
               for part in key.strip().lower().split("."))


def _phi_key(key: str) -> bool:
    k = key.strip()
    if k.upper() in PHI_TAGS or k in PHI_KEYWORDS:
        return True
    # QIDO attribute paths: 00101002.00100020, OtherPatientIDsSequence.PatientID
    return "." in k and any(_phi_key(part) for part in k.split("."))


class Redactor:
    """Replaces PHI by salted short hashes (unless `redact` is off) and secrets always."""

    def __init__(self, redact: bool = True, salt: bytes | None = None) -> None:
        self.redact = redact
        self.salt = salt or secrets.token_bytes(16)
        self._seen: dict[str, str] = {}
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def phi(self, value: Any) -> str:
        """`<PHI:hash>` for a PHI value (the value itself with redaction off)."""
        text = "" if value is None else str(value)
        if not self.redact or not text.strip() or text.strip() in ("*", "^", "?"):
            return text
        digest = hmac.new(self.salt, text.strip().encode("utf-8"), hashlib.sha256)
        token = f"<PHI:{digest.hexdigest()[:6]}>"
        if len(text.strip()) >= 3:
            with self._lock:
                if text.strip() not in self._seen:
                    self._seen[text.strip()] = token
                    self._pattern = None
        return token

    def known(self, text: str) -> str:
        """`text` with every PHI value met so far replaced by its hash."""
        if not self.redact or not self._seen:
            return text
        with self._lock:
            if self._pattern is None:
                values = sorted(self._seen, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(v) for v in values))
            pattern, seen = self._pattern, dict(self._seen)
        return pattern.sub(lambda m: seen.get(m.group(0), m.group(0)), text)

    # -- URLs, headers, forms

    def url(self, url: str) -> str:
        """A URL with user info and secret parameters hidden, PHI parameters hashed."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return self.text(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = SECRET + "@" + netloc.rsplit("@", 1)[1]
        path = parts.path
        if self.redact and "/Patient/" in path:  # a FHIR Patient read: the id is PHI
            segments = path.split("/")
            for i in range(1, len(segments)):
                if segments[i - 1] == "Patient" and segments[i] and segments[i][0] not in "$_":
                    segments[i] = self.phi(unquote(segments[i]))
            path = "/".join(segments)
        query = parts.query
        if query:
            query = "&".join(
                f"{quote(k, safe='.,:')}={self.param(k, v)}"
                for k, v in parse_qsl(query, keep_blank_values=True)
            )
        return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))

    def param(self, key: str, value: str) -> str:
        if is_secret_key(key):
            return SECRET
        if _phi_key(key) or _phi_fhir_param(key):
            return self.phi(value)
        return quote(value, safe="*,.:-^_ /")

    def headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(k, SECRET if is_secret_key(k) else v) for k, v in headers]

    def form(self, body: str) -> str:
        return "&".join(f"{k}={self.param(k, v)}" for k, v in parse_qsl(
            body, keep_blank_values=True))

    # -- JSON (DICOM JSON, FHIR, OAuth answers), possibly cut off at BODY_LIMIT

    _TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[{}\[\]:,]|[^"{}\[\]:,\s]+')

    def json_text(self, text: str) -> str:
        """JSON text with PHI values hashed and secret values hidden; works on a prefix.

        A member whose key is a PHI tag, keyword or FHIR name field (or a secret)
        has every value inside it replaced, however nested, up to the `,` or
        closing bracket that ends it; keys and `"vr"` values stay readable.
        """
        out: list[str] = []
        pos = 0
        depth = 0
        hidden_at: int | None = None  # depth of the PHI/secret member being hidden
        secret = False
        last_key = ""
        for match in self._TOKEN.finditer(text):
            token = match.group(0)
            out.append(text[pos : match.start()])
            pos = match.end()
            if token in "{[":
                depth += 1
            elif token in "}]":
                depth -= 1
                if hidden_at is not None and depth < hidden_at:
                    hidden_at = None
            elif token == ",":
                if hidden_at is not None and depth == hidden_at:
                    hidden_at = None
            elif token == ":":
                pass
            elif token.startswith('"') and text[pos : pos + 8].lstrip().startswith(":"):
                last_key = token[1:-1]
                if hidden_at is None and (_phi_key(last_key) or last_key in _PHI_JSON_KEYS
                                          or is_secret_key(last_key)):
                    hidden_at = depth
                    secret = is_secret_key(last_key)
            elif hidden_at is not None and last_key != "vr":
                if token.startswith('"'):
                    value = token[1:-1] if len(token) > 1 and token.endswith('"') else token[1:]
                    token = '"' + (SECRET if secret else self.phi(value)) + '"'
                elif token not in ("null", "true", "false"):
                    token = SECRET if secret else self.phi(token)
            out.append(token)
        out.append(text[pos:])
        return "".join(out)

    # -- free text (log lines)

    _URL = re.compile(r"https?://[^\s'\"<>]+")
    _KEY_VALUE = re.compile(
        r"\b(" + "|".join(sorted(PHI_KEYWORDS)) + r")(\s*[=:]\s*)(?!<PHI:|<secret>)"
        r"('[^']*'|\"[^\"]*\"|[^\s,;)&]+)")
    _BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
    _SECRET_KV = re.compile(
        r"\b([A-Za-z_-]*(?:token|secret|password|passcode|api[_-]?key)[A-Za-z_-]*)"
        r"(\s*[=:]\s*)(?!<secret>)('[^']*'|\"[^\"]*\"|[^\s,;&)]+)", re.IGNORECASE)

    def text(self, text: str) -> str:
        """A log line or message: URLs, `Keyword=value`, credentials, known PHI values."""
        text = self._URL.sub(lambda m: self.url(m.group(0)), text)
        text = self._BEARER.sub(lambda m: f"{m.group(1)} {SECRET}", text)
        text = self._SECRET_KV.sub(lambda m: f"{m.group(1)}{m.group(2)}{SECRET}", text)
        text = self._KEY_VALUE.sub(
            lambda m: f"{m.group(1)}{m.group(2)}{self._quoted_phi(m.group(3))}", text)
        return self.known(text)

    def _quoted_phi(self, value: str) -> str:
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            return value[0] + self.phi(value[1:-1]) + value[0]
        return self.phi(value)


# --------------------------------------------------------------------------
# DICOM data sets as text


def dataset_lines(ds: Any, redactor: Redactor, indent: str = "    ") -> list[str]:
    """One line per element of a pydicom Dataset, PHI values hashed, sequences nested."""
    lines: list[str] = []
    for elem in ds:
        tag = f"{elem.tag.group:04X}{elem.tag.element:04X}"
        name = elem.keyword or "?"
        head = f"{indent}({tag[:4]},{tag[4:]}) {elem.VR} {name}"
        if elem.VR == "SQ":
            lines.append(f"{head}: {len(elem.value)} item(s)")
            for n, item in enumerate(elem.value, 1):
                lines.append(f"{indent}  item {n}")
                if tag in PHI_TAGS:
                    lines += [f"{indent}    {redactor.phi(str(list(item)))}"] if redactor.redact \
                        else dataset_lines(item, redactor, indent + "    ")
                else:
                    lines += dataset_lines(item, redactor, indent + "    ")
            continue
        value = _element_text(elem)
        if tag == "00000900" and isinstance(elem.value, int):
            value = f"0x{elem.value:04X}"
        if tag in PHI_TAGS and value:
            value = "\\".join(redactor.phi(v) for v in value.split("\\"))
        lines.append(f"{head} = {value}" if value else f"{head} =")
    return lines


def _element_text(elem: Any) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def decode_dataset(data: bytes, transfer_syntax: str) -> Any:
    """A pydicom Dataset from encoded bytes (an identifier), or None if it cannot be read."""
    from io import BytesIO

    from pydicom.filereader import read_dataset

    implicit = transfer_syntax == "1.2.840.10008.1.2"
    little = transfer_syntax != "1.2.840.10008.1.2.2"
    raw = data
    if transfer_syntax == "1.2.840.10008.1.2.1.99":
        import zlib

        raw = zlib.decompress(data, -zlib.MAX_WBITS)
    try:
        ds = read_dataset(BytesIO(raw), implicit, little)
        for _ in ds:  # convert now: errors surface here, not while writing
            pass
        return ds
    except Exception:
        return None


# --------------------------------------------------------------------------
# The trace file


class Trace:
    """An open trace file: `entry()` appends one timestamped block (thread- and
    process-safe: one `write` per entry on an O_APPEND descriptor)."""

    def __init__(self, path: str, redactor: Redactor, *, new: bool = True) -> None:
        self.path = path
        self.redactor = redactor
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_TRUNC if new else 0)
        self.fd = os.open(path, flags, 0o600)
        self._lock = threading.Lock()
        if new:
            from medimg_cli import __version__

            mode = ("PHI redacted: <PHI:hash> is a salted hash, equal within this trace"
                    if redactor.redact else "PHI NOT redacted (--no-redact)")
            self._write(f"# medimg {__version__} trace, started "
                        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; "
                        f"{mode}; secrets always redacted\n")

    def _write(self, text: str) -> None:
        with self._lock:
            os.write(self.fd, text.encode("utf-8", "replace"))

    def entry(self, kind: str, title: str, lines: Iterable[str] = ()) -> None:
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}"
        body = "".join(f"{line}\n" for line in lines)
        self._write(f"{stamp} {kind:<5} {title}\n{body}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


_trace: Trace | None = None
_redactor: Redactor | None = None
_state_lock = threading.Lock()


def start(path: str, *, redact: bool = True) -> Trace:
    """Open a new trace (for this process and the worker processes it starts)."""
    global _trace, _redactor
    with _state_lock:
        redactor = redactor_for(redact)
        _trace = Trace(path, redactor)
        os.environ[ENV_FILE] = os.path.abspath(path)
        os.environ[ENV_SALT] = redactor.salt.hex()
        os.environ[ENV_REDACT] = "1" if redact else "0"
        return _trace


def redactor_for(redact: bool) -> Redactor:
    """The process's redactor (created on first use; shared by the trace and the log)."""
    global _redactor
    if _redactor is None:
        salt = os.environ.get(ENV_SALT)
        _redactor = Redactor(redact, bytes.fromhex(salt) if salt else None)
    _redactor.redact = redact
    return _redactor


def current() -> Trace | None:
    """The open trace, or None. A worker process opens its parent's on first use."""
    global _trace
    if _trace is None and os.environ.get(ENV_FILE):
        with _state_lock:
            if _trace is None:
                redactor = redactor_for(os.environ.get(ENV_REDACT, "1") != "0")
                _trace = Trace(os.environ[ENV_FILE], redactor, new=False)
    return _trace


def stop() -> None:
    global _trace
    with _state_lock:
        if _trace is not None:
            _trace.close()
            _trace = None
        for key in (ENV_FILE, ENV_SALT, ENV_REDACT):
            os.environ.pop(key, None)


class RedactingFilter(logging.Filter):
    """For the -vv log handler: every record's message goes through `Redactor.text`."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        record.msg = self.redactor.text(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redactor.text(
                logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def http_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]],
                 redactor: Redactor) -> list[str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [f"    {k}: {v}" for k, v in redactor.headers(list(items))]


def http_body(body: bytes, content_type: str, redactor: Redactor, total: int | None) -> list[str]:
    """The first BODY_LIMIT bytes of a text, JSON or form body, redacted; a note otherwise."""
    size = f"{total} bytes" if total is not None else "length unknown"
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        return [] if total in (None, 0) else [f"    <body: {size}, not traced>"]
    if kind.startswith("multipart/") or kind in ("application/dicom", "application/octet-stream"):
        return [f"    <body: {kind}, {size}, not traced>"]
    text = body[:BODY_LIMIT].decode("utf-8", "replace")
    if "json" in kind:
        text = redactor.json_text(text)
    elif kind == "application/x-www-form-urlencoded":
        text = redactor.form(text)
    else:
        text = redactor.text(text)
    cut = (total or len(body)) > BODY_LIMIT
    lines = ["    " + line for line in text.splitlines()]
    if cut:
        lines.append(f"    <... cut at {BODY_LIMIT} bytes of {size}>")
    return lines
