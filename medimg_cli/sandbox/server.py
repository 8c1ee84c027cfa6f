"""Run the sandbox: the archive, the DIMSE SCP and the HTTP server, until Ctrl-C.

On start with an empty index, DICOM files already in the data folder are
indexed where they are; a folder with none gets the demo studies. Every
association and request is printed as one line on stdout, redacted as -vv logs
and traces are (medimg_cli.trace): PHI in request paths and queries as
`<PHI:hash>` unless `redact` is off, secrets always hidden.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medimg_cli.errors import Interrupted, UsageError
from medimg_cli.sandbox.dimse import Destination


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("medimg")) / "sandbox"


@dataclass
class SandboxSettings:
    data: Path
    host: str = "127.0.0.1"
    dicom_port: int = 11112
    http_port: int = 8080
    aet: str = "SANDBOX"
    destinations: dict[str, Destination] = field(default_factory=dict)
    demo: bool = True  # a new, empty data folder gets the demo studies
    redact: bool = True  # PHI in the console lines hashed (--no-redact keeps it)


_REQUEST_PATH = re.compile(r"\b(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) (/\S*)")


class Printer:
    """One line per event, from any thread, flushed at once (pipes included).

    Lines may be pasted into tickets: request paths and queries (`GET
    /fhir/Patient?name=...`) and `Keyword=value` text go through the trace's
    Redactor; `redact=False` keeps PHI, never secrets.
    """

    def __init__(self, stream: Any = None, *, redact: bool = True) -> None:
        from medimg_cli.trace import Redactor

        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.redactor = Redactor(redact)

    def redacted(self, line: str) -> str:
        r = self.redactor
        line = _REQUEST_PATH.sub(lambda m: f"{m.group(1)} {r.url(m.group(2))}", line)
        return r.text(line)

    def __call__(self, line: str) -> None:
        line = self.redacted(line)
        stamp = time.strftime("%H:%M:%S")
        with self.lock:
            try:
                self.stream.write(f"{stamp} {line}\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass


def _files_to_index(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.startswith("index.sqlite") or name.endswith(".part"):
                continue
            found.append(Path(dirpath, name))
    return found


def open_archive(data: Path, say: Callable[[str], None], demo: bool = True) -> Any:
    """The archive in `data`: existing files indexed, or the demo set on a new folder."""
    from medimg_cli.sandbox.store import Archive, remove_stale_parts

    try:
        data.mkdir(parents=True, exist_ok=True)
        archive = Archive(data)
    except OSError as exc:
        raise UsageError(f"cannot use '{data}' as the sandbox's data folder: "
                         f"{exc.strerror or exc}", hint="choose another with --data") from None
    remove_stale_parts(archive)
    if archive.count_instances() == 0:
        files = _files_to_index(data)
        if files:
            added = archive.index_in_place(files)
            say(f"indexed {added} DICOM files found in {data}")
        elif demo:
            from medimg_cli.sandbox.demo import seed

            added = seed(archive)
            say(f"new data folder: stored {added} demo instances")
    return archive


def serve(settings: SandboxSettings, say: Callable[[str], None] | None = None,
          ready: Callable[[], None] | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM."""
    from medimg_cli.sandbox.dimse import DimseServer, DimseSettings, destinations
    from medimg_cli.sandbox.http import HttpServer

    say = say or Printer(redact=settings.redact)
    archive = open_archive(settings.data, say, settings.demo)
    dimse = DimseServer(archive, DimseSettings(settings.aet, settings.host, settings.dicom_port,
                                               settings.destinations), say)
    try:
        dimse.start()
    except OSError as exc:
        archive.close()
        raise UsageError(
            f"cannot listen for DICOM on {settings.host}:{settings.dicom_port}: "
            f"{exc.strerror or exc}", hint="choose another port with --dicom-port") from None
    try:
        web = HttpServer(archive, settings.host, settings.http_port, say, aet=settings.aet)
    except OSError as exc:
        dimse.stop()
        archive.close()
        raise UsageError(
            f"cannot listen for HTTP on {settings.host}:{settings.http_port}: "
            f"{exc.strerror or exc}", hint="choose another port with --http-port") from None
    thread = threading.Thread(target=web.serve_forever, name="sandbox-http", daemon=True)
    thread.start()
    patients, studies, series, instances = archive.summary()
    base = f"http://{settings.host}:{settings.http_port}"
    say(f"medimg sandbox: {patients} patients, {studies} studies, {series} series, "
        f"{instances} instances in {settings.data}")
    say(f"  DICOM     {settings.aet}@{settings.host}:{settings.dicom_port} "
        "(C-ECHO, C-FIND, C-MOVE, C-GET, C-STORE)")
    say("  C-MOVE to " + (destinations(settings.destinations) or "nobody"))
    say(f"  DICOMweb  {base}/dicom-web (QIDO-RS, WADO-RS, STOW-RS)")
    say(f"  FHIR R4   {base}/fhir (Patient, ImagingStudy, DiagnosticReport)")
    say("Ctrl-C stops it.")
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    if ready is not None:
        ready()
    try:
        while not stop.wait(0.5):
            pass
    except (KeyboardInterrupt, Interrupted):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        say("stopping")
        web.shutdown()
        web.server_close()
        dimse.stop()
        archive.close()
