"""C-MOVE and C-GET: retrieve studies, series or instances to disk.

`retrieve()` runs one C-MOVE or C-GET per requested item over one
association, writing what arrives through an `InstanceWriter`: C-MOVE to
medimg's own embedded storage SCP (or to a third AE with `dest`), C-GET
over the same association (SCP role negotiated for the storage classes
actually in the study). `--timeout` bounds idle time, not the whole
retrieval: a large C-MOVE whose pending responses come minutes apart lives
as long as images keep arriving.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_cli.dimse.association import Target, open_association
from medimg_cli.dimse.receive import InstanceWriter, Received
from medimg_cli.dimse.status import describe_status
from medimg_cli.errors import ConnectError, RefusedError, RemoteError, UsageError
from medimg_cli.storage import Layout, remove_partials, stored_sop_uids
from medimg_cli.transfer import ItemResult, Progress, ProgressCallback, TransferSummary

log = logging.getLogger("medimg.dimse")

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.transport import ThreadedAssociationServer

    from medimg_cli.dimse.tls import TlsSettings

MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Query/Retrieve - MOVE
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve - GET
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PENDING = (0xFF00, 0xFF01)
_MAX_CONTEXTS = 128
CANCEL_GRACE = 3.0  # seconds to wait for the peer's answer to C-CANCEL
# Proposed for C-GET when the SOP classes present cannot be asked for.
_COMMON_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.1.2",  # MG for presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.12.1",  # XA
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
)


@dataclass(frozen=True)
class RetrieveItem:
    """One `STUDY[/SERIES[/SOP]]` line, or a series' missing instances (resume)."""

    study: str
    series: str | None = None
    sops: tuple[str, ...] = ()

    @property
    def level(self) -> str:
        return "IMAGE" if self.sops else "SERIES" if self.series else "STUDY"

    @classmethod
    def parse(cls, line: str) -> RetrieveItem:
        """A line as `find --format uids` prints it."""
        parts = [p.strip() for p in line.strip().split("/")]
        if not 1 <= len(parts) <= 3 or not all(_UID.match(p) and len(p) <= 64 for p in parts):
            raise UsageError(
                f"'{line.strip()}' is not a UID line",
                hint="expected STUDY, STUDY/SERIES or STUDY/SERIES/SOP, as "
                "`medimg find --format uids` prints",
            )
        return cls(parts[0], parts[1] if len(parts) > 1 else None, tuple(parts[2:3]))

    def identifier(self) -> Any:
        from pydicom import Dataset

        ds = Dataset()
        ds.QueryRetrieveLevel = self.level
        ds.StudyInstanceUID = self.study
        if self.series:
            ds.SeriesInstanceUID = self.series
        if self.sops:
            ds.SOPInstanceUID = "\\".join(self.sops)
        return ds


@dataclass
class RetrieveOptions:
    """Where and how to retrieve."""

    out: Path
    layout: Layout = field(default_factory=Layout)
    skip_existing: bool = False
    dest: str | None = None  # C-MOVE to a third AE instead of our own SCP
    receive_aet: str = "MEDIMG"
    receive_port: int = 11113
    batch: int = 100  # SOP Instance UIDs per C-MOVE/C-GET when resuming
    # Set by the parallel runner: several processes receive on one port
    # (SO_REUSEPORT), so a worker cannot tell which instances were its own.
    shared_receiver: bool = False
    instances: list[Instance] | None = None  # already listed by the parent
    receive_tls: TlsSettings | None = None  # the embedded SCP speaks DICOM TLS


@dataclass(frozen=True)
class Instance:
    study: str
    series: str
    sop: str
    sop_class: str


class _Activity:
    """When the peer last did something: a response or an image."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def touch(self) -> None:
        self.at = time.monotonic()

    def idle(self, writer: InstanceWriter | None) -> float:
        last = max(self.at, writer.last_activity if writer else 0.0)
        return time.monotonic() - last


def list_instances(target: Target, items: Sequence[RetrieveItem]) -> list[Instance]:
    """The instances each item covers, by C-FIND at IMAGE level (walking series)."""
    from medimg_cli.dimse.find import find
    from medimg_cli.query import build_query

    found: list[Instance] = []
    for item in items:
        query = build_query(
            level="instance",
            study_uid=item.study,
            series_uid=item.series,
            keys=[f"SOPInstanceUID={item.sops[0]}"] if item.sops else (),
        )
        for record in find(target, query):
            def value(tag: str, rec: dict[str, Any] = record) -> str:
                values = rec.get(tag, {}).get("Value") or [""]
                return str(values[0])

            found.append(Instance(value("0020000D"), value("0020000E"), value("00080018"),
                                  value("00080016")))
    return found


def missing_items(
    instances: Sequence[Instance], have: set[str], batch: int
) -> list[RetrieveItem]:
    """IMAGE-level items for the instances not on disk, by series, `batch` UIDs each."""
    by_series: dict[tuple[str, str], list[str]] = {}
    for inst in instances:
        if inst.sop not in have:
            by_series.setdefault((inst.study, inst.series), []).append(inst.sop)
    items = []
    for (study, series), sops in by_series.items():
        for i in range(0, len(sops), batch):
            items.append(RetrieveItem(study, series, tuple(sops[i : i + batch])))
    return items


def retrieve(
    kind: str,
    target: Target,
    items: Sequence[RetrieveItem],
    options: RetrieveOptions,
    *,
    progress: ProgressCallback | None = None,
    on_file: Callable[[Received], None] | None = None,
    profile: str = "",
    before_shutdown: Callable[[], None] | None = None,
) -> TransferSummary:
    """Retrieve `items` by C-MOVE (`kind="move"`) or C-GET (`kind="get"`).

    `before_shutdown` runs before the embedded SCP stops (the parallel runner
    waits there for the other workers, whose images may arrive here).
    """
    summary = TransferSummary(operation=kind, profile=profile)
    state = Progress()
    lock = threading.Lock()
    out = options.out.expanduser().resolve()
    by_study: dict[str, ItemResult] = {}

    def study_result(uid: str) -> ItemResult:
        if uid not in by_study:
            by_study[uid] = ItemResult(name=uid)
            summary.items.append(by_study[uid])
        return by_study[uid]

    current: list[str] = [""]

    def received(file: Received) -> None:
        with lock:
            state.done += 1
            state.bytes += file.size
            result = study_result(file.study_instance_uid or current[0])
            result.done += 1
            result.bytes += file.size
        if on_file is not None:
            on_file(file)
        if progress is not None:
            progress(state)

    def failed(sop: str, reason: str) -> None:
        with lock:
            state.failed += 1
            study_result(current[0]).failed += 1

    writer = None if options.dest else InstanceWriter(out, options.layout, received, failed)
    sop_classes: list[str] = []
    work = list(items)
    if kind == "get" and not options.skip_existing and options.instances is None:
        sop_classes = study_sop_classes(target, work)
    if options.skip_existing or (kind == "get" and not sop_classes):
        instances = options.instances if options.instances is not None else _list_or_none(
            target, work)
        if kind == "get":
            sop_classes = sorted({i.sop_class for i in instances or [] if i.sop_class})
        if options.skip_existing:
            if instances is None:
                raise RemoteError(
                    "--skip-existing needs the instance list, and the PACS refused C-FIND",
                    hint="retry without --skip-existing, or allow C-FIND for our AE title",
                )
            have = stored_sop_uids(out)
            for inst in instances:
                if inst.sop in have:
                    summary.skipped += 1
                    state.skipped += 1
                    study_result(inst.study).skipped += 1
            work = missing_items(instances, have, options.batch)
            state.total = len(instances)
    if progress is not None:
        progress(state)

    server = _start_scp(options, writer) if kind == "move" and writer is not None else None
    try:
        if work:
            _run(kind, target, work, options, writer, sop_classes, state, summary,
                 study_result, current, progress, lock)
    except BaseException:
        if writer is not None:
            remove_partials(out)
        raise
    finally:
        if server is not None:
            if before_shutdown is not None:
                before_shutdown()
            server.shutdown()
    summary.bytes = state.bytes
    summary.done = state.done if writer is not None else summary.done
    summary.failed = max(summary.failed, state.failed)
    return summary.finish()


def study_sop_classes(target: Target, items: Sequence[RetrieveItem]) -> list[str]:
    """SOP classes of the items' studies from SOPClassesInStudy: one response per study.

    Empty when the PACS does not return them for every study (DCMTK's dcmqrscp
    does not): then the instances are listed instead.
    """
    from medimg_cli.dimse.find import find
    from medimg_cli.query import build_query

    studies = sorted({item.study for item in items})
    query = build_query(level="study", study_uid=",".join(studies), keys=["SOPClassesInStudy="])
    found: dict[str, list[str]] = {}
    try:
        for record in find(target, query):
            study = (record.get("0020000D", {}).get("Value") or [""])[0]
            classes = record.get("00080062", {}).get("Value") or []
            found[str(study)] = [str(c) for c in classes]
    except RemoteError:
        return []
    if any(not found.get(study) for study in studies):
        return []
    return sorted({c for classes in found.values() for c in classes})


def _list_or_none(target: Target, items: Sequence[RetrieveItem]) -> list[Instance] | None:
    try:
        return list_instances(target, items)
    except RemoteError:
        return None


def receive_syntaxes(syntaxes: Sequence[str]) -> list[str]:
    """Transfer syntaxes we accept, in our order of preference.

    pynetdicom's acceptor picks the first of *its* list that the peer offers.
    Uncompressed first, Explicit VR Little Endian leading (what most PACS
    store): a PACS that offers its file's own syntax together with others is
    then never asked for a lossy conversion.
    """
    first = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
    return [*first, *(s for s in syntaxes if s not in first)]


def _start_scp(options: RetrieveOptions, writer: InstanceWriter) -> ThreadedAssociationServer:
    """The embedded storage SCP that C-MOVE sends to: every storage class, any syntax."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
    from pynetdicom.sop_class import _STORAGE_CLASSES

    from medimg_cli.dimse.association import tune
    from medimg_cli.dimse.tracing import handlers as trace_handlers

    tune()
    ae = AE(ae_title=options.receive_aet)
    ae.maximum_pdu_size = 0
    if options.shared_receiver:
        from medimg_cli.dimse import association

        association.REUSE_PORT = True
    ae.network_timeout = None
    for uid in _STORAGE_CLASSES.values():
        ae.add_supported_context(uid, receive_syntaxes(ALL_TRANSFER_SYNTAXES))
    ssl_context = None
    if options.receive_tls is not None:
        from medimg_cli.dimse.tls import server_context

        ssl_context = server_context(options.receive_tls)
    try:
        server = ae.start_server(
            ("0.0.0.0", options.receive_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, writer.handle), *trace_handlers()],
            ssl_context=ssl_context,
        )
    except OSError as exc:
        raise UsageError(
            f"cannot receive on port {options.receive_port}: {exc.strerror}",
            hint="another program (or medimg) listens there; set receive_port in the profile "
            "or [defaults], or use --port",
        ) from None
    assert server is not None
    return server


def _run(
    kind: str,
    target: Target,
    work: list[RetrieveItem],
    options: RetrieveOptions,
    writer: InstanceWriter | None,
    sop_classes: list[str],
    state: Progress,
    summary: TransferSummary,
    study_result: Callable[[str], ItemResult],
    current: list[str],
    progress: ProgressCallback | None,
    lock: threading.Lock,
) -> None:
    from pynetdicom import ALL_TRANSFER_SYNTAXES, evt
    from pynetdicom.presentation import build_role

    model = MOVE_MODEL if kind == "move" else GET_MODEL
    contexts: list[tuple[str, Sequence[str]]] = [
        (model, ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"))]
    ext_neg: list[Any] = []
    handlers: list[Any] = []
    if kind == "get":
        assert writer is not None
        classes = sop_classes or list(_COMMON_STORAGE)
        for uid in classes[: _MAX_CONTEXTS - 1]:
            contexts.append((uid, ALL_TRANSFER_SYNTAXES))
            ext_neg.append(build_role(uid, scp_role=True))
        handlers.append((evt.EVT_C_STORE, writer.handle))

    activity = _Activity()
    with open_association(target, contexts, ext_neg=ext_neg, handlers=handlers,
                          idle_timeout=True) as assoc:
        watchdog = _Watchdog(assoc, target, activity, writer)
        watchdog.start()
        try:
            for msg_id, item in enumerate(work, start=1):
                current[0] = item.study
                started = time.monotonic()
                before_done, before_failed = state.done, state.failed
                result = study_result(item.study)
                final = _one(kind, assoc, target, item, model, msg_id % 65536, options,
                             activity, watchdog, state, progress)
                result.seconds += time.monotonic() - started
                completed, failed, warning = final.counts
                result.requested += completed + failed + warning
                result.warnings += warning
                result.status = f"0x{final.status:04X}"
                if writer is None:  # third-party move: the SCP's counts are all we know
                    with lock:
                        summary.done += completed
                        result.done += completed
                        result.failed += failed
                        summary.failed += failed
                        summary.warnings += warning
                    continue
                got = state.done - before_done
                lost = completed + warning - got
                if final.status in (0x0000, 0xB000) and lost > 0 and not options.shared_receiver:
                    # The PACS says it sent them, but they did not arrive here.
                    with lock:
                        state.failed += lost
                        result.failed += lost
                    result.message = (
                        f"the PACS reports {completed + warning} sent but {got} arrived here; "
                        f"its entry for AE '{options.receive_aet}' may point elsewhere"
                    )
                if failed > (state.failed - before_failed):
                    with lock:
                        extra = failed - (state.failed - before_failed)
                        state.failed += extra
                        result.failed += extra
                if final.message:
                    result.message = final.message
                    if final.requested_failed:
                        with lock:
                            state.failed += 1
                            result.failed += 1
                summary.warnings += warning
        finally:
            watchdog.stop()


@dataclass
class _Final:
    status: int
    counts: tuple[int, int, int]
    message: str = ""
    requested_failed: bool = False


def _one(
    kind: str,
    assoc: Association,
    target: Target,
    item: RetrieveItem,
    model: str,
    msg_id: int,
    options: RetrieveOptions,
    activity: _Activity,
    watchdog: _Watchdog,
    state: Progress,
    progress: ProgressCallback | None,
) -> _Final:
    """One C-MOVE/C-GET; Ctrl-C sends C-CANCEL first."""
    try:
        for rsp in _send(kind, assoc, target, item, model, msg_id, options, activity, watchdog):
            status = int(rsp.Status or 0)
            counts = (
                int(rsp.NumberOfCompletedSuboperations or 0),
                int(rsp.NumberOfFailedSuboperations or 0),
                int(rsp.NumberOfWarningSuboperations or 0),
            )
            if status in _PENDING:
                remaining = rsp.NumberOfRemainingSuboperations
                if remaining is not None:
                    state.remaining = int(remaining)
                if progress is not None:
                    progress(state)
                continue
            state.remaining = 0
            return _final(kind, status, counts, item, options, str(rsp.ErrorComment or ""))
    except BaseException as exc:
        from medimg_cli.errors import Interrupted

        log.debug("C-%s stopped by %r; association established: %s", kind.upper(), exc,
                  assoc.is_established)
        if isinstance(exc, (KeyboardInterrupt, Interrupted)) and assoc.is_established:
            assoc.send_c_cancel(msg_id, query_model=model)
            _drain(kind, assoc, deadline=time.monotonic() + CANCEL_GRACE)
        raise
    raise RemoteError(f"the C-{kind.upper()} ended without a final response")


def _drain(kind: str, assoc: Association, deadline: float) -> None:
    """After C-CANCEL: take the peer's remaining messages until its final response."""
    from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE

    assoc._reactor_checkpoint.clear()
    try:
        while not assoc._is_paused and time.monotonic() < deadline:
            time.sleep(0.0001)
        while time.monotonic() < deadline and assoc.is_established:
            _, rsp = assoc.dimse.get_msg(block=True)
            if rsp is None:
                if assoc.acse.is_aborted("a-abort") or assoc.acse.is_aborted("a-p-abort"):
                    return
                continue
            if isinstance(rsp, C_STORE):
                assoc._c_store_scp(rsp)
            elif isinstance(rsp, (C_GET, C_MOVE)) and int(rsp.Status or 0) not in _PENDING:
                return
    finally:
        assoc._reactor_checkpoint.set()


def _final(
    kind: str, status: int, counts: tuple[int, int, int], item: RetrieveItem,
    options: RetrieveOptions, comment: str,
) -> _Final:
    what = f"C-{kind.upper()}"
    if status in (0x0000, 0xB000, 0xFE00):
        return _Final(status, counts)
    meaning = describe_status(status, kind)
    if status == 0xA801:
        dest = options.dest or options.receive_aet
        raise RemoteError(
            f"{what} refused: {meaning}: the PACS does not know '{dest}' as a move destination",
            hint=f"add AE '{dest}' with this host's address and port "
            f"{options.receive_port if not options.dest else '(its port)'} to the PACS's list "
            "of DICOM nodes, or use `medimg get`, which needs no inbound port",
        )
    if status in (0xA701, 0xA702, 0xA700):
        raise RemoteError(f"{what} refused: {meaning}",
                          hint="the PACS is out of resources: retry later")
    message = f"{what} of {item.level.lower()} {item.study} failed: {meaning}" + (
        f" ({comment})" if comment else "")
    if kind == "move" and sum(counts) == 0:
        # Orthanc, among others, answers 0xC000 rather than 0xA801 for this.
        dest = options.dest or options.receive_aet
        message += (f"; if the PACS does not know '{dest}' as a move destination, this is how "
                    f"some answer: add it to the PACS's DICOM nodes, or use `medimg get`")
    return _Final(status, counts, message, requested_failed=sum(counts) == 0)


def _send(
    kind: str,
    assoc: Association,
    target: Target,
    item: RetrieveItem,
    model: str,
    msg_id: int,
    options: RetrieveOptions,
    activity: _Activity,
    watchdog: _Watchdog,
) -> Iterator[Any]:
    """Send the request; yield each C-MOVE/C-GET response, serving C-STOREs (C-GET)."""
    from pydicom.uid import UID
    from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
    from pynetdicom.dsutils import encode

    context = assoc._get_valid_context(model, "", "scu")
    syntax = context.transfer_syntax[0]
    req: C_MOVE | C_GET = C_MOVE() if kind == "move" else C_GET()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = UID(model)
    req.Priority = 2
    if isinstance(req, C_MOVE):
        req.MoveDestination = options.dest or options.receive_aet
    encoded = encode(item.identifier(), bool(syntax.is_implicit_VR), True, False)
    req.Identifier = BytesIO(encoded or b"")
    expected = C_MOVE if kind == "move" else C_GET

    assoc._reactor_checkpoint.clear()
    try:
        while not assoc._is_paused:
            time.sleep(0.0001)
        assoc.dimse.send_msg(req, int(context.context_id or 0))
        activity.touch()
        while True:
            _, rsp = assoc.dimse.get_msg(block=True)
            if rsp is None:
                # The reactor is paused while we wait, so a peer's A-ABORT is still
                # in the DUL queue: look there (as pynetdicom's own wrappers do).
                if assoc.acse.is_aborted("a-abort") or assoc.acse.is_aborted("a-p-abort"):
                    assoc._handle_no_response()
                    raise RefusedError(
                        f"the peer aborted the association during the C-{kind.upper()}",
                        hint="the PACS broke off; check its log (rerun with -vv for ours)",
                    )
                if watchdog.expired:
                    raise watchdog.error()
                if assoc.is_established:
                    continue  # only the poll interval passed
                raise RefusedError(
                    f"the association was aborted during the C-{kind.upper()}",
                    hint="the PACS broke off; check its log (rerun with -vv for ours)",
                )
            activity.touch()
            if isinstance(rsp, C_STORE):
                assoc._c_store_scp(rsp)
                continue
            if not isinstance(rsp, expected) or not rsp.is_valid_response:
                assoc.abort()
                raise RemoteError(f"the peer answered the C-{kind.upper()} with an invalid "
                                  "message; aborted")
            yield rsp
            if int(rsp.Status or 0) not in _PENDING:
                return
    finally:
        assoc._reactor_checkpoint.set()


class _Watchdog(threading.Thread):
    """Aborts the association when neither a response nor an image came for `timeout` s."""

    def __init__(self, assoc: Association, target: Target, activity: _Activity,
                 writer: InstanceWriter | None) -> None:
        super().__init__(daemon=True, name="medimg-watchdog")
        self.assoc = assoc
        self.target = target
        self.activity = activity
        self.writer = writer
        self.expired = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            if self.activity.idle(self.writer) > self.target.timeout:
                self.expired = True
                self.assoc.abort()
                return

    def stop(self) -> None:
        self._stop_event.set()

    def error(self) -> ConnectError:
        return ConnectError(
            f"nothing from {self.target.host}:{self.target.port} for {self.target.timeout:g} s "
            "(no response and no image); aborted",
            hint="the PACS may be stuck or the network broken; --timeout sets how long to wait "
            "while idle",
        )


# --------------------------------------------------------------------------
# --parallel N: worker processes, each with its own association (and, for
# C-MOVE, its own receiver on the shared port), fed disjoint instance batches.


def split_work(instances: Sequence[Instance], have: set[str], workers: int,
               batch: int) -> list[list[RetrieveItem]]:
    """The missing instances as IMAGE-level items, dealt out to `workers` evenly."""
    items = missing_items(instances, have, batch)
    shares: list[list[RetrieveItem]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for item in sorted(items, key=lambda i: -len(i.sops)):
        lightest = loads.index(min(loads))
        shares[lightest].append(item)
        loads[lightest] += len(item.sops)
    return [share for share in shares if share]


def _worker(kind: str, target: Target, items: list[RetrieveItem], options: RetrieveOptions,
            queue: Any, barrier: Any) -> None:
    """One process of a parallel retrieval; reports files and its summary on `queue`."""
    from medimg_cli.errors import MedimgError

    def on_file(file: Received) -> None:
        queue.put(("file", str(file.path), file.sop_instance_uid, file.study_instance_uid,
                   file.size))

    def wait_for_others() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=max(target.timeout, 5.0) * 4)

    try:
        summary = retrieve(kind, target, items, options, on_file=on_file,
                           before_shutdown=wait_for_others)
        queue.put(("summary", summary.as_dict()))
    except MedimgError as exc:
        barrier.abort()
        queue.put(("error", type(exc).__name__, exc.message, exc.hint))
    except BaseException as exc:
        barrier.abort()
        queue.put(("error", "MedimgError", f"{type(exc).__name__}: {exc}", None))


def retrieve_parallel(
    kind: str,
    target: Target,
    items: Sequence[RetrieveItem],
    options: RetrieveOptions,
    workers: int,
    *,
    progress: ProgressCallback | None = None,
    on_file: Callable[[Received], None] | None = None,
    profile: str = "",
) -> TransferSummary:
    """Retrieve with `workers` processes: the instances are listed, split, fetched at once."""
    import multiprocessing
    import queue as queue_module

    from medimg_cli import errors

    out = options.out.expanduser().resolve()
    instances = list_instances(target, items)
    have = stored_sop_uids(out) if options.skip_existing else set()
    summary = TransferSummary(operation=kind, profile=profile)
    state = Progress(total=len(instances))
    by_study: dict[str, ItemResult] = {}

    def study_result(uid: str) -> ItemResult:
        if uid not in by_study:
            by_study[uid] = ItemResult(name=uid)
            summary.items.append(by_study[uid])
        return by_study[uid]

    for inst in instances:
        study_result(inst.study).requested += 1
        if inst.sop in have:
            summary.skipped += 1
            state.skipped += 1
            study_result(inst.study).skipped += 1
    shares = split_work(instances, have, workers, options.batch)
    if progress is not None:
        progress(state)
    if not shares:
        return summary.finish()

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    barrier = context.Barrier(len(shares))
    worker_options = RetrieveOptions(
        out=out, layout=options.layout, dest=options.dest, receive_aet=options.receive_aet,
        receive_port=options.receive_port, batch=options.batch,
        shared_receiver=kind == "move", instances=instances if kind == "get" else None,
    )
    procs = [
        context.Process(target=_worker, args=(kind, target, share, worker_options, results,
                                              barrier), daemon=True)
        for share in shares
    ]
    for proc in procs:
        proc.start()
    failures: list[tuple[str, str, str | None]] = []
    finished = 0
    completed_by_peer = 0
    try:
        while finished < len(procs):
            try:
                message = results.get(timeout=0.5)
            except queue_module.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
                continue
            if message[0] == "file":
                _, path, sop, study, size = message
                state.done += 1
                state.bytes += size
                result = study_result(study)
                result.done += 1
                result.bytes += size
                if on_file is not None:
                    on_file(Received(Path(path), sop, study, size))
                if progress is not None:
                    progress(state)
            elif message[0] == "summary":
                finished += 1
                data = message[1]
                summary.warnings += data["warnings"]
                for item in data["items"]:
                    completed_by_peer += item["requested"] - item["failed"] - item["warnings"]
                    failed = item["failed"]
                    if failed:
                        study_result(item["name"]).failed += failed
                        state.failed += failed
                    if item["message"]:
                        study_result(item["name"]).message = item["message"]
            else:
                finished += 1
                failures.append((message[1], message[2], message[3]))
    except BaseException:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGINT)
        for proc in procs:
            proc.join(CANCEL_GRACE + 2)
        remove_partials(out)
        raise
    for proc in procs:
        proc.join()
    if failures:
        name, message, hint = failures[0]
        error_class = getattr(errors, name, errors.MedimgError)
        raise error_class(message, hint)
    summary.done = state.done
    summary.failed = state.failed
    summary.bytes = state.bytes
    if kind == "move" and not options.dest and completed_by_peer > state.done:
        lost = completed_by_peer - state.done
        summary.failed += lost
        study_result(instances[0].study).message = (
            f"the PACS reports {completed_by_peer} sent but {state.done} arrived here; its "
            f"entry for AE '{options.receive_aet}' may point elsewhere")
    return summary.finish()
