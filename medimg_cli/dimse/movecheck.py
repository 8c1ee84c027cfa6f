"""`echo --move-check`: will images sent by C-MOVE reach medimg?

C-MOVE is the PACS opening a second association back to a destination it
looks up by AE title in its own list of DICOM nodes; the request only names
the AE title. Most "the images never arrive" tickets are one of a handful of
causes, each checked here as far as the protocol lets a client check:

1. our receive port can be bound on this machine (listening for the check's
   duration, so a PACS that connects back is seen);
2. the PACS offers C-MOVE to our calling AE at all (presentation context);
3. the PACS knows our AE title as a move destination: a C-MOVE of a study UID
   that matches nothing answers 0xA801 (Move Destination Unknown) when it
   does not, success with no sub-operations when it does (some PACS,
   Orthanc among them, answer a plain failure 0xC000 for an unknown
   destination, which is reported as such);
4. the address the PACS must send to: the local address of the association.

Whether the PACS's entry for our AE has the right host and port cannot be
seen from here (it sends nothing for a UID that matches nothing): the
report says so and names what to compare.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medimg_cli.dimse.association import Target, open_association
from medimg_cli.errors import ConnectError, MedimgError, RefusedError, UsageError

log = logging.getLogger("medimg.dimse")

VERIFICATION = "1.2.840.10008.1.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
_PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class Check:
    """One pre-flight check: verdict ok | fail | warn | info."""

    name: str
    verdict: str
    detail: str
    hint: str = ""


@dataclass(frozen=True)
class Cause:
    """A common reason images never arrive; state: found | ruled out | possible."""

    key: str
    text: str
    hint: str
    state: str = "possible"


@dataclass
class MoveCheckResult:
    """The checks, the causes with their state, and the first problem found."""

    receive_aet: str
    receive_port: int
    checks: list[Check] = field(default_factory=list)
    causes: list[Cause] = field(default_factory=list)
    status: int | None = None
    inbound: list[str] = field(default_factory=list)
    # TCP connections to our receiver (with or without an association on them).
    connections: list[str] = field(default_factory=list)
    problem: MedimgError | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "receive_aet": self.receive_aet,
            "receive_port": self.receive_port,
            "ok": self.ok,
            "move_status": None if self.status is None else f"0x{self.status:04X}",
            "inbound_associations": self.inbound,
            "inbound_connections": self.connections,
            "checks": [c.__dict__ for c in self.checks],
            "causes": [c.__dict__ for c in self.causes],
        }


def _causes(aet: str, port: int, quirks: Sequence[str]) -> list[Cause]:
    """The usual suspects, most common first, each in one line with what to do."""
    causes = [
        Cause("destination-unknown",
              f"the PACS does not know AE '{aet}' as a move destination",
              f"ask the PACS administrator to add AE '{aet}' with this host's address and "
              f"port {port} to its DICOM nodes (AE titles are case-sensitive)"),
        Cause("move-not-offered",
              f"the PACS does not offer C-MOVE to calling AE '{aet}'",
              "ask for C-MOVE (query/retrieve SCP) rights for our AE title on the PACS"),
        Cause("port-busy",
              f"another program already listens on port {port} here",
              "stop it, or set receive_port in the profile or [defaults] (and on the PACS)"),
        Cause("wrong-address",
              f"the PACS's entry for '{aet}' points to another host or port",
              "compare its host/port with the address shown above; the PACS connects to what "
              "it has on file, not to where the request came from"),
        Cause("firewall",
              f"a firewall or NAT between the PACS and this host blocks port {port} inbound",
              "open the port inbound (host firewall too), or use `medimg get` (C-GET needs no "
              "inbound connection)"),
        Cause("receiver-mismatch",
              "the PACS connects but no association follows: DICOM TLS on one side only",
              f"set receive_tls to match the PACS's entry for '{aet}' (TLS or plain)"),
        Cause("storage-rejected",
              "the PACS cannot agree a storage context with medimg for some SOP classes",
              "medimg's receiver accepts every storage class and transfer syntax; check the "
              "PACS's log for the sub-association it opened"),
    ]
    extra = [Cause(f"vendor-{i}", q, "documented vendor behaviour (see the preset's source)")
             for i, q in enumerate(quirks, start=1)]
    return causes + extra


def _listen(port: int, aet: str, inbound: list[str], connections: list[str],
            receive_tls: Any = None) -> Any:
    """A storage SCP on `port` for the check's duration; records who connects.

    With `receive_tls` (TlsSettings) it speaks DICOM TLS, as `move` would.
    """
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
    from pynetdicom.sop_class import _STORAGE_CLASSES

    from medimg_cli.dimse.association import tune

    tune()
    ae = AE(ae_title=aet)
    ae.add_supported_context(VERIFICATION, list(_SYNTAXES))
    for uid in list(_STORAGE_CLASSES.values())[:100]:
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    lock = threading.Lock()

    def opened(event: Any) -> None:
        host, remote_port = event.address
        with lock:
            connections.append(f"{host}:{remote_port}")

    def accepted(event: Any) -> None:
        rq = event.assoc.requestor
        with lock:
            inbound.append(f"{str(rq.ae_title).strip()} from {rq.address}:{rq.port}")

    def stored(event: Any) -> int:
        return 0x0000

    ssl_context = None
    if receive_tls is not None:
        from medimg_cli.dimse.tls import server_context

        ssl_context = server_context(receive_tls)
    return ae.start_server(("0.0.0.0", port), block=False, ssl_context=ssl_context,
                           evt_handlers=[(evt.EVT_CONN_OPEN, opened),
                                         (evt.EVT_ACCEPTED, accepted),
                                         (evt.EVT_C_STORE, stored)])


def _local_address(host: str, port: int) -> str:
    """The address this host uses to reach the PACS (what the PACS must send to)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return str(s.getsockname()[0])
    except OSError:
        return "?"


def move_check(target: Target, *, receive_port: int, receive_aet: str | None = None,
               quirks: Sequence[str] = (), sample: bool = True,
               settle: float = 0.3, receive_tls: Any = None) -> MoveCheckResult:
    """Run the move pre-flight against `target`; never raises for what it finds.

    With `sample`, one instance found by C-FIND is moved to our listener (and
    discarded): only a real transfer proves the PACS's entry for our AE and
    the network path. The first problem found is in `result.problem` (the
    error the command exits with); connection and association failures are
    problems too.
    """
    import time

    from medimg_cli.dimse.association import resolve

    aet = receive_aet or target.calling_aet
    result = MoveCheckResult(receive_aet=aet, receive_port=receive_port)
    state = _State()
    port_problem: MedimgError | None = None

    # 1. our receive port
    server = None
    if receive_port == 0:
        result.checks.append(Check(
            "receive port", "warn", "receive_port is 0: a free port is picked each time",
            "a PACS sends to a fixed port: set receive_port to the port the PACS has for "
            f"'{aet}'"))
    else:
        try:
            server = _listen(receive_port, aet, result.inbound, result.connections,
                             receive_tls)
        except OSError as exc:
            state.found.add("port-busy")
            reason = exc.strerror or str(exc)
            result.checks.append(Check(
                "receive port", "fail", f"cannot listen on port {receive_port}: {reason}",
                "another program (or another medimg) listens there: stop it, or set "
                "receive_port in the profile or [defaults], and on the PACS"))
            port_problem = UsageError(
                f"move pre-flight: cannot listen on port {receive_port}: {reason}",
                hint="another program listens there; stop it or set receive_port "
                "(and the PACS's entry for our AE) to a free port")
        else:
            state.ruled_out.add("port-busy")
            result.checks.append(Check("receive port", "ok",
                                       f"port {receive_port} can be bound on this host"))
    try:
        try:
            address = resolve(target)
            result.checks.append(Check(
                "address to send to", "info",
                f"the PACS must have AE '{aet}' = {_local_address(address, target.port)}:"
                f"{receive_port} (this host's address towards {target.host})"))
            _exchange(target, aet, result, state, sample=sample and server is not None,
                      settle=settle)
        except (ConnectError, RefusedError) as exc:
            state.problems.insert(0, exc)
            result.checks.append(Check("association", "fail", exc.message, exc.hint or ""))
        if not state.sampled:
            time.sleep(settle if server is not None else 0)
            if result.inbound:
                state.ruled_out.update({"firewall", "wrong-address"})
                result.checks.append(Check(
                    "inbound connection", "ok",
                    "the PACS connected back to us: " + "; ".join(result.inbound)))
            else:
                result.checks.append(Check(
                    "inbound connection", "info",
                    "not tested (no instance was moved); only a real move proves the path: "
                    "`medimg move` one small study"))
    finally:
        if server is not None:
            server.shutdown()
    problems = [*state.problems, *([port_problem] if port_problem else [])]
    result.problem = problems[0] if problems else None
    result.causes = [
        Cause(c.key, c.text, c.hint,
              "FOUND" if c.key in state.found
              else "ruled out" if c.key in state.ruled_out else "possible")
        for c in _causes(aet, receive_port, quirks)
    ]
    return result


@dataclass
class _State:
    found: set[str] = field(default_factory=set)
    ruled_out: set[str] = field(default_factory=set)
    problems: list[MedimgError] = field(default_factory=list)
    sampled: bool = False


def _fail(result: MoveCheckResult, state: _State, name: str, detail: str, hint: str,
          cause: str | None = None) -> None:
    result.checks.append(Check(name, "fail", detail, hint))
    state.problems.append(RefusedError(f"move pre-flight: {detail}", hint=hint))
    if cause:
        state.found.add(cause)


def _move(assoc: Any, target: Target, ds: Any, aet: str, model: str,
          msg_id: int) -> tuple[int, str, tuple[int, int, int]]:
    """One C-MOVE: its final status, error comment and (completed, failed, warning)."""
    from medimg_cli.dimse.status import check_no_response

    status, comment, counts = 0xC000, "", (0, 0, 0)
    for rsp, _ in assoc.send_c_move(ds, aet, model, msg_id=msg_id):
        check_no_response(rsp, assoc, target, "C-MOVE")
        status = int(rsp.Status)
        comment = str(getattr(rsp, "ErrorComment", "") or "")
        counts = tuple(int(getattr(rsp, k, 0) or 0) for k in (  # type: ignore[assignment]
            "NumberOfCompletedSuboperations", "NumberOfFailedSuboperations",
            "NumberOfWarningSuboperations"))
        if status not in _PENDING:
            break
    return status, comment, counts


def _first_match(assoc: Any, target: Target, ds: Any, model: str, msg_id: int) -> Any:
    """The first C-FIND match for `ds`, or None; C-CANCEL after the first."""
    from medimg_cli.dimse.status import check_no_response

    first = None
    for rsp, identifier in assoc.send_c_find(ds, model, msg_id=msg_id):
        check_no_response(rsp, assoc, target, "C-FIND")
        status = int(rsp.Status)
        if status in _PENDING:
            if first is None:
                first = identifier
                assoc.send_c_cancel(msg_id, query_model=model)
            continue
        break
    return first


def _sample_instance(assoc: Any, target: Target, find_model: str) -> Any:
    """Study, series and SOP Instance UIDs of one instance the PACS holds, or None."""
    from pydicom.dataset import Dataset

    keys: dict[str, str] = {}
    for msg_id, (level, key) in enumerate((("STUDY", "StudyInstanceUID"),
                                           ("SERIES", "SeriesInstanceUID"),
                                           ("IMAGE", "SOPInstanceUID")), start=10):
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for known, value in keys.items():
            setattr(ds, known, value)
        setattr(ds, key, "")
        match = _first_match(assoc, target, ds, find_model, msg_id)
        value = str(getattr(match, key, "") or "") if match is not None else ""
        if not value:
            return None
        keys[key] = value
    sample = Dataset()
    sample.QueryRetrieveLevel = "IMAGE"
    for key, value in keys.items():
        setattr(sample, key, value)
    return sample


def _exchange(target: Target, aet: str, result: MoveCheckResult, state: _State, *,
              sample: bool, settle: float) -> None:
    """The C-MOVE of nothing, then (with `sample`) of one real instance."""
    import time

    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    from medimg_cli.dimse.status import describe_status

    register = (f"ask the PACS administrator to add AE '{aet}' with this host's address and "
                f"port {result.receive_port} to its DICOM nodes / move destinations")
    contexts = [(VERIFICATION, _SYNTAXES), (STUDY_MOVE, _SYNTAXES), (PATIENT_MOVE, _SYNTAXES),
                (STUDY_FIND, _SYNTAXES)]
    with open_association(target, contexts) as assoc:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        if STUDY_MOVE in accepted:
            model = STUDY_MOVE
        elif PATIENT_MOVE in accepted:
            model = PATIENT_MOVE
        else:
            _fail(result, state, "C-MOVE offered",
                  f"the PACS accepted no C-MOVE context (Study or Patient Root) from "
                  f"'{target.calling_aet}'",
                  f"ask the PACS administrator for query/retrieve (C-MOVE) rights for AE "
                  f"'{target.calling_aet}'", "move-not-offered")
            return
        state.ruled_out.add("move-not-offered")
        name = "Study Root" if model == STUDY_MOVE else "Patient Root"
        result.checks.append(Check("C-MOVE offered", "ok",
                                   f"{name} Q/R MOVE accepted for '{target.calling_aet}'"))
        # A UID that matches nothing: 0xA801 if the PACS checks the destination first.
        ds = Dataset()
        uid = generate_uid(prefix="2.25.")
        if model == STUDY_MOVE:
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = uid
        else:
            ds.QueryRetrieveLevel = "PATIENT"
            ds.PatientID = f"MEDIMG-NO-SUCH-{uid[-12:]}"
        status, comment, counts = _move(assoc, target, ds, aet, model, 1)
        result.status = status
        meaning = describe_status(status, "move") + (f" ({comment})" if comment else "")
        if status == 0xA801:
            _fail(result, state, "move destination",
                  f"the PACS does not know '{aet}' as a move destination ({meaning})",
                  register, "destination-unknown")
            return
        if status in (0x0000, 0xB000):
            result.checks.append(Check(
                "move of nothing", "ok",
                f"C-MOVE of a UID that matches nothing to '{aet}': {meaning} (the PACS did not "
                "refuse the destination; some check it only when there is something to send)"))
        else:
            result.checks.append(Check(
                "move of nothing", "warn",
                f"C-MOVE of a UID that matches nothing to '{aet}': {meaning}; inconclusive: some "
                "PACS (Orthanc among them) answer so both for no match and for an unknown "
                "destination", register))
        if not sample:
            if status in (0x0000, 0xB000):
                state.ruled_out.add("destination-unknown")
            return
        # One real instance, to our listener.
        sample_ds = _sample_instance(assoc, target, STUDY_FIND) if (
            STUDY_FIND in accepted and model == STUDY_MOVE) else None
        if sample_ds is None:
            result.checks.append(Check(
                "sample move", "info",
                "skipped: no instance found by C-FIND (or C-FIND not offered)"))
            if status in (0x0000, 0xB000):
                state.ruled_out.add("destination-unknown")
            return
        before = len(result.inbound)
        before_connections = len(result.connections)
        status, comment, counts = _move(assoc, target, sample_ds, aet, model, 2)
    state.sampled = True
    deadline = time.monotonic() + settle + 2.0
    while len(result.inbound) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    meaning = describe_status(status, "move") + (f" ({comment})" if comment else "")
    completed, failed, warning = counts
    arrived = result.inbound[before:]
    connected = result.connections[before_connections:]
    if status == 0xA801:
        _fail(result, state, "move destination",
              f"the PACS does not know '{aet}' as a move destination ({meaning})",
              register, "destination-unknown")
    elif arrived and status in (0x0000, 0xB000):
        result.checks[:] = [Check(c.name, "info", c.detail) if c.name == "move of nothing"
                            else c for c in result.checks]
        state.ruled_out.update({"destination-unknown", "wrong-address", "firewall",
                                "storage-rejected", "receiver-mismatch"})
        result.checks.append(Check(
            "move destination", "ok", f"the PACS knows '{aet}' as a move destination"))
        result.checks.append(Check(
            "sample move", "ok",
            f"one instance moved and received here ({meaning}); the PACS connected as "
            + "; ".join(arrived)))
    elif completed + warning > 0 and not arrived:
        state.ruled_out.add("destination-unknown")
        _fail(result, state, "sample move",
              f"the PACS reports {completed + warning} instance sent, but nothing arrived here",
              f"the PACS's entry for '{aet}' points to another host or port: it must be "
              f"this host's address, port {result.receive_port}", "wrong-address")
    elif connected and not arrived:
        state.ruled_out.update({"destination-unknown", "wrong-address", "firewall"})
        _fail(result, state, "sample move",
              f"the PACS knows '{aet}' and connected to our port {result.receive_port} "
              f"(from {', '.join(connected)}), but no association came of it ({meaning})",
              "the PACS and our receiver disagree on DICOM TLS (receive_tls in the profile "
              f"must match the PACS's setting for '{aet}'), or the PACS's log says why it "
              "gave up", "receiver-mismatch")
    elif failed > 0:
        state.ruled_out.add("destination-unknown")
        if arrived:
            state.found.add("storage-rejected")
        _fail(result, state, "sample move",
              f"the PACS knows '{aet}' but could not deliver to it ({meaning}, {failed} failed)"
              + ("" if arrived else "; it never connected to us"),
              "check the PACS's entry for our AE (host and port) and any firewall between "
              f"it and port {result.receive_port} here; the PACS's log names the reason",
              None if arrived else "firewall")
    else:
        _fail(result, state, "move destination",
              f"the C-MOVE of one existing instance to '{aet}' failed: {meaning} and the "
              "PACS never connected to us; it most likely does not know that AE title as a "
              f"move destination (or cannot reach port {result.receive_port} here)",
              register, "destination-unknown")
