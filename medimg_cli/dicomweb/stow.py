"""STOW-RS: send DICOM files to a DICOMweb server (`stow` with a dicomweb profile).

The files are found, their meta read and the non-DICOM ones skipped exactly as
for C-STORE (`dimse.store.send_all`); what differs is the sending:

1. The files are cut into batches of at most `batch_size` files and
   `batch_bytes` bytes (a single larger file goes alone).
2. Each batch is one `POST {url}/studies[/{study}]` whose body is
   `multipart/related; type="application/dicom"`, one part per file, the Part
   10 file as it is on disk. The body is a generator: each file is opened and
   read in chunks only when its part is being sent, so memory stays flat
   whatever the batch size. Its length is known beforehand (file sizes plus
   part headers), so it goes with a Content-Length rather than chunked.
3. Before a file joins the body its structure is checked (a truncated file
   fails alone: a part cannot be withdrawn once sent).
4. The answer (DICOM JSON) tells each instance's fate: ReferencedSOPSequence
   (0008,1199) stored, with WarningReason (0008,1196) a warning;
   FailedSOPSequence (0008,1198) failed with FailureReason (0008,1197).

A STOW is never retried (the server may have stored part of it). HTTP 401/403
raise RefusedError (exit 4); in a 400 or 409 answer the files it lists as
failed get its FailureReason, those it lists as stored are stored (Orthanc
answers 409 as soon as one instance failed, e.g. one of another study than
`--study`, having stored the rest), and the others fail with the HTTP status;
another HTTP failure fails the files of that batch with the server's message.
Either way the next batch is tried.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_cli.dimse.store import (
    FAILED,
    STORED,
    WARNING,
    CorruptFileError,
    DicomFile,
    FileResult,
    ResultCallback,
    check_file,
    send_all,
)
from medimg_cli.errors import RemoteError, UsageError
from medimg_cli.transfer import ProgressCallback, TransferSummary

if TYPE_CHECKING:
    import httpx

    from medimg_cli.config import Profile

log = logging.getLogger("medimg.dicomweb.stow")

CHUNK = 1 << 20
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
REFERENCED_SOP_INSTANCE_UID = "00081155"
PART_HEADER = b"Content-Type: application/dicom\r\n\r\n"


def batches(files: Sequence[DicomFile], max_files: int, max_bytes: int) -> list[list[DicomFile]]:
    """Consecutive batches of at most `max_files` files and `max_bytes` bytes each."""
    out: list[list[DicomFile]] = []
    size = 0
    for f in files:
        if not out or len(out[-1]) >= max_files or (out[-1] and size + f.size > max_bytes):
            out.append([])
            size = 0
        out[-1].append(f)
        size += f.size
    return out


class _FileChanged(Exception):
    """A file's size changed between the check and its part being sent."""


class MultipartBody:
    """A `multipart/related` request body read from the files while it is sent."""

    def __init__(self, files: Sequence[DicomFile], boundary: str | None = None) -> None:
        self.files = list(files)
        self.boundary = boundary or f"medimg-{uuid.uuid4().hex}"
        self.delimiter = f"--{self.boundary}\r\n".encode("ascii")
        self.close = f"--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __len__(self) -> int:
        head = len(self.delimiter) + len(PART_HEADER)
        return sum(head + f.size + 2 for f in self.files) + len(self.close)

    def __iter__(self) -> Iterator[bytes]:
        for f in self.files:
            yield self.delimiter + PART_HEADER
            sent = 0
            with open(f.path, "rb") as fh:
                while sent < f.size:
                    chunk = fh.read(min(CHUNK, f.size - sent))
                    if not chunk:
                        break
                    sent += len(chunk)
                    yield chunk
            if sent != f.size:
                raise _FileChanged(f"{f.path} changed while it was being sent")
            yield b"\r\n"
        yield self.close


def _uid_of(item: Any) -> str:
    element = item.get(REFERENCED_SOP_INSTANCE_UID) if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    return str(values[0]) if isinstance(values, list) and values else ""


def _code_of(item: Any, tag: str) -> int | None:
    element = item.get(tag) if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    if isinstance(values, list) and values:
        try:
            return int(values[0])
        except (TypeError, ValueError):
            return None
    return None


def _items(answer: dict[str, Any], tag: str) -> list[Any]:
    element = answer.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def describe_reason(code: int) -> str:
    """A FailureReason / WarningReason (DIMSE storage status codes) in words."""
    from medimg_cli.dimse.status import describe_status

    text = describe_status(code, "store")
    return text if ":" in text else describe_status(code, "general")


def parse_answer(
    files: Sequence[DicomFile], status: int, body: bytes, seconds: float, error: str = "",
) -> list[FileResult]:
    """Each file's result from a STOW-RS answer (DICOM JSON, PS3.18 10.5.3).

    `status` 200 stored all, 202 some; 400 and 409 (with `error`, the HTTP
    failure in words) failed, and may say why per instance. What the answer
    lists in ReferencedSOPSequence was stored whatever the status: Orthanc
    answers 409 when any instance failed, having stored the others.
    """
    answer: Any = None
    if body.strip():
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if isinstance(answer, list) and len(answer) == 1:
            answer = answer[0]
    fates: dict[str, tuple[str, int | None, str]] = {}
    if isinstance(answer, dict):
        for item in _items(answer, REFERENCED_SOP_SEQUENCE):
            warning = _code_of(item, WARNING_REASON)
            if warning is None:
                fates[_uid_of(item)] = (STORED, 0, "")
            else:
                fates[_uid_of(item)] = (WARNING, warning, describe_reason(warning))
        for item in _items(answer, FAILED_SOP_SEQUENCE):
            reason = _code_of(item, FAILURE_REASON)
            message = describe_reason(reason) if reason is not None else "failed (no reason given)"
            fates[_uid_of(item)] = (FAILED, reason, message)
    default: tuple[str, int | None, str]
    if status >= 400:
        default = (FAILED, None, error or f"HTTP {status}")
    elif not fates:  # no usable answer: the HTTP status is all there is
        if status == 200:
            default = (STORED, 0, "")
        else:
            readable = "no answer body" if answer is None else "an answer without results"
            default = (WARNING, None, f"HTTP {status} with {readable}: "
                                      "some instances may not have been stored")
    else:
        default = (WARNING, None, "the server's answer does not mention this instance")
    per_file = seconds / max(len(files), 1)
    results = []
    for f in files:
        kind, code, message = fates.get(f.sop_instance_uid, default)
        sent = f.size if kind != FAILED else 0
        results.append(FileResult(str(f.path), f.sop_instance_uid, kind, code, message,
                                  sent, per_file))
    return results


def post_batch(
    client: httpx.Client, files: Sequence[DicomFile], *, study: str | None = None,
) -> list[FileResult]:
    """Check the files, POST the good ones in one STOW-RS request; a result per file."""
    from medimg_cli.dicomweb.client import check_response, request

    results: list[FileResult] = []
    good: list[DicomFile] = []
    for f in files:
        try:
            check_file(f)
        except CorruptFileError as exc:
            results.append(FileResult(str(f.path), f.sop_instance_uid, FAILED,
                                      message=f"corrupt DICOM file: {exc}"))
            continue
        except OSError as exc:
            results.append(FileResult(str(f.path), f.sop_instance_uid, FAILED,
                                      message=f"cannot read: {exc.strerror or exc}"))
            continue
        good.append(f)
    if not good:
        return results
    body = MultipartBody(good)
    url = f"studies/{study}" if study else "studies"
    what = f"STOW-RS of {len(good)} file{'s' if len(good) != 1 else ''}"
    started = time.perf_counter()
    try:
        response = request(
            client, "POST", url, what=what, idempotent=False, answered=(400, 409),
            content=iter(body),
            headers={"Content-Type": body.content_type, "Content-Length": str(len(body)),
                     "Accept": "application/dicom+json"},
        )
    except _FileChanged as exc:
        return results + [FileResult(str(f.path), f.sop_instance_uid, FAILED,
                                     message=f"not sent: {exc}") for f in good]
    except RemoteError as exc:
        return results + [FileResult(str(f.path), f.sop_instance_uid, FAILED,
                                     message=exc.message) for f in good]
    seconds = time.perf_counter() - started
    log.info("%s: HTTP %d in %.3f s", what, response.status_code, seconds)
    error = ""
    if response.status_code >= 400:
        try:
            check_response(response, what)
        except RemoteError as exc:
            error = exc.message
    return results + parse_answer(good, response.status_code, response.content, seconds, error)


def stow_rs(
    profile: Profile,
    paths: Sequence[str | Path],
    *,
    study: str | None = None,
    batch_size: int = 100,
    batch_bytes: int = 100_000_000,
    parallel: int = 1,
    timeout: float | None = None,
    on_result: ResultCallback | None = None,
    progress: ProgressCallback | None = None,
) -> TransferSummary:
    """STOW-RS the DICOM files in `paths` (files or directories, recursively).

    Every file ends in one FileResult, passed to `on_result` as it is known.
    `parallel` > 1 sends that many batches at once (threads: the work is
    I/O). Returns the summary (`exit_code` 0, 6 or 5); HTTP 401/403 raise
    RefusedError, a connection failure ConnectError.
    """
    from medimg_cli.dicomweb.client import open_client

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: expected 1 or more")
    if batch_bytes < 1:
        raise UsageError("--batch-mb: expected more than 0")
    if parallel < 1:
        raise UsageError(f"--parallel {parallel}: expected 1 or more")
    if study is not None and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", study):
        raise UsageError(f"--study '{study}': not a UID (digits and dots)")

    def send(files: list[DicomFile], record: ResultCallback) -> None:
        work = batches(files, batch_size, batch_bytes)
        with open_client(profile, timeout=timeout) as client:
            if parallel == 1 or len(work) == 1:
                for batch in work:
                    for result in post_batch(client, batch, study=study):
                        record(result)
                return
            with ThreadPoolExecutor(max_workers=min(parallel, len(work)),
                                    thread_name_prefix="stow-rs") as pool:
                pending: set[Future[list[FileResult]]] = {
                    pool.submit(post_batch, client, batch, study=study) for batch in work}
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                        for future in done:
                            for result in future.result():  # raises a batch's error
                                record(result)
                finally:
                    for future in pending:
                        future.cancel()

    return send_all(profile.name, paths, send, on_result=on_result, progress=progress)
