"""Association setup with pynetdicom, tuned and diagnosed.

`tune()` applies what ../shared/PERFORMANCE.md measured: TCP_NODELAY on every
socket, pynetdicom's own log handlers and identifier formatting off. `open_association`
resolves, connects and negotiates, and turns every way that can fail into a
medimg error that says in plain words what happened and what to check.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medimg_cli.errors import ConnectError, RefusedError

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from medimg_cli.dimse.tls import TlsSettings
    from medimg_cli.dimse.user_identity import UserIdentity

log = logging.getLogger("medimg.dimse")

POLL_SECONDS = 0.5
TLS_HANDSHAKE_SECONDS = 30.0  # for a peer connecting to our TLS receiver
PEEK_SECONDS = 0.5  # how long our plain receiver waits for a peer's first bytes
# Receivers bind with SO_REUSEPORT, so that parallel workers share one port.
REUSE_PORT = False
_tuned = False
_tune_lock = threading.Lock()


@dataclass(frozen=True)
class Target:
    """Where to associate: the peer's address and AE titles, and our settings."""

    host: str
    port: int
    called_aet: str
    calling_aet: str = "MEDIMG"
    timeout: float = 30.0
    max_pdu: int = 0
    profile: str = "?"
    tls: TlsSettings | None = None  # DICOM TLS (profile key tls = true)
    user_identity: UserIdentity | None = None  # A-ASSOCIATE User Identity negotiation


@dataclass(frozen=True)
class ContextResult:
    """One proposed presentation context and what the peer answered."""

    abstract_syntax: str
    name: str
    accepted: bool
    result: str
    transfer_syntaxes: tuple[str, ...]


@dataclass
class AssociationReport:
    """What the peer told us in its A-ASSOCIATE-AC: for `-v` and `--probe`."""

    peer_ae: str = ""
    peer_max_pdu: int = 0
    peer_implementation_uid: str = ""
    peer_implementation_version: str = ""
    contexts: list[ContextResult] = field(default_factory=list)
    seconds: float = 0.0
    # Seconds per phase: dns, connect, associate (A-ASSOCIATE round trip), release.
    timing: dict[str, float] = field(default_factory=dict)
    # User Identity: what we sent and what the peer answered (None: nothing sent).
    user_identity: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "timing": {k: round(v, 6) for k, v in self.timing.items()},
            "peer_ae": self.peer_ae,
            "peer_max_pdu": self.peer_max_pdu,
            "peer_implementation_class_uid": self.peer_implementation_uid,
            "peer_implementation_version_name": self.peer_implementation_version,
            "contexts": [c.__dict__ for c in self.contexts],
            "seconds": round(self.seconds, 6),
            **({"user_identity": self.user_identity} if self.user_identity else {}),
        }


def tune() -> None:
    """Configure pynetdicom once per process for speed and quiet (idempotent)."""
    global _tuned
    with _tune_lock:
        if _tuned:
            return
        from pynetdicom import _config
        from pynetdicom.transport import AssociationServer, AssociationSocket

        _config.LOG_HANDLER_LEVEL = "none"
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False

        def create_socket(self: AssociationSocket, address: Any) -> socket.socket:
            family = socket.AF_INET if address.is_ipv4 else socket.AF_INET6
            sock = _DiagnosedSocket(family, socket.SOCK_STREAM)
            sock.medimg_assoc = self.assoc
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.assoc.network_timeout is not None:
                sock.settimeout(self.assoc.network_timeout)
            sock.bind(address.as_tuple)
            self._is_connected = False
            return sock

        original_get_request = AssociationServer.get_request
        original_server_bind = AssociationServer.server_bind

        def server_bind(self: AssociationServer) -> None:
            if REUSE_PORT and self.socket is not None:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            original_server_bind(self)

        def get_request(self: AssociationServer) -> tuple[socket.socket, tuple[str, int]]:
            if self.ssl_context is not None:
                return _tls_request(self)
            client, address = original_get_request(self)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _warn_if_tls(client, address)
            return client, address

        AssociationSocket._create_socket = create_socket  # type: ignore[method-assign]
        AssociationServer.get_request = get_request  # type: ignore[method-assign]
        AssociationServer.server_bind = server_bind  # type: ignore[method-assign]
        from medimg_cli.dimse import fastpath

        fastpath.install()
        _tuned = True


def _warn_if_tls(client: socket.socket, address: tuple[str, int]) -> None:
    """A peer that opens TLS on our plain receiver: say so (its images never arrive).

    Peeks at the first bytes (a peer sends its request at once; a silent one
    costs at most PEEK_SECONDS of the accept loop).
    """
    from medimg_cli.dimse.tls import looks_like_tls

    previous = client.gettimeout()
    try:
        client.settimeout(PEEK_SECONDS)
        first = client.recv(3, socket.MSG_PEEK)
    except OSError:
        return
    finally:
        client.settimeout(previous)
    if looks_like_tls(first):
        log.warning("%s:%s opened a TLS connection to our receiver, which speaks plain "
                    "DICOM: set receive_tls = true (with cert_file and key_file) in the "
                    "profile", address[0], address[1])


def _tls_request(server: Any) -> tuple[socket.socket, tuple[str, int]]:
    """Accept a connection to a TLS receiver: the handshake is bounded in time (it runs
    in the server's accept loop) and a failed one is logged, as the peer cannot say why
    its images never arrived."""
    sock, address = server.socket.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(TLS_HANDSHAKE_SECONDS)
    try:
        client = server.ssl_context.wrap_socket(sock, server_side=True)
    except OSError as exc:
        log.warning("TLS handshake with %s:%s failed on our receiver: %s", address[0],
                    address[1], getattr(exc, "reason", None) or exc)
        sock.close()
        raise
    client.settimeout(server.socket.gettimeout())
    return client, address


class _DiagnosedSocket(socket.socket):
    """A socket that remembers why `connect` failed, for the diagnosis."""

    medimg_assoc: Any = None

    def connect(self, address: Any) -> None:
        import time

        started = time.perf_counter()
        try:
            super().connect(address)
            if self.medimg_assoc is not None:
                self.medimg_assoc.medimg_connect_seconds = time.perf_counter() - started
        except OSError as exc:
            if self.medimg_assoc is not None:
                self.medimg_assoc.medimg_connect_error = exc
            raise

    # The first read tells the diagnosis what the peer answered first: a TLS record
    # (the port expects TLS) or a reset before any byte (what DCMTK's TLS ports do to
    # a plain request): `medimg_first_bytes` is then those bytes, or b"". Later reads
    # go straight through.
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.medimg_assoc is None:
            return super().recv(bufsize, flags)
        try:
            data = super().recv(bufsize, flags)
        except ConnectionResetError:
            self._first_read(b"", reset=True)
            raise
        self._first_read(data[:8])
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if self.medimg_assoc is None:
            return super().recv_into(buffer, nbytes, flags)
        try:
            count = super().recv_into(buffer, nbytes, flags)
        except ConnectionResetError:
            self._first_read(b"", reset=True)
            raise
        self._first_read(bytes(memoryview(buffer)[: min(count, 8)]))
        return count

    def _first_read(self, data: bytes, *, reset: bool = False) -> None:
        if self.medimg_assoc is not None and (data or reset):
            self.medimg_assoc.medimg_first_bytes = data
        self.medimg_assoc = None


def resolve(target: Target) -> str:
    """The peer's address, or a ConnectError naming the host that does not resolve."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectError(
            f"cannot resolve host '{target.host}': {exc.strerror}",
            hint=f"check host in profile '{target.profile}', and DNS or /etc/hosts on this machine",
        ) from None
    except UnicodeError:
        raise ConnectError(f"host '{target.host}' is not a valid host name") from None
    # Prefer IPv4, as most PACS listen there.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


# A-ASSOCIATE-RJ (PS3.8 9.3.4): (source, reason) -> what it means, what to check.
def _reject_diagnosis(source: int, reason: int, target: Target) -> tuple[str, str]:
    p = target.profile
    where = f"{target.host}:{target.port}"
    table: dict[tuple[int, int], tuple[str, str]] = {
        (1, 1): (
            "no reason given",
            "the PACS may accept only known calling AE titles or IP addresses; register "
            f"'{target.calling_aet}' and this host on it, and check its log",
        ),
        (1, 2): (
            "application context name not supported",
            f"the peer at {where} does not speak standard DICOM",
        ),
        (1, 3): (
            f"calling AE title not recognised: the PACS does not know us as "
            f"'{target.calling_aet}'",
            f"register AE '{target.calling_aet}' (and this host) on the PACS, or set "
            f"calling_aet in profile '{p}' or [defaults] to an AE title it knows",
        ),
        (1, 7): (
            f"called AE title not recognised: the PACS at {where} does not know "
            f"'{target.called_aet}'",
            f"check called_aet in profile '{p}' (ask the PACS administrator for its AE "
            f"title); if it is right, the PACS may not accept our calling AE title "
            f"'{target.calling_aet}' from this host (DCMTK-based PACS answer so)",
        ),
        (2, 1): ("no reason given (ACSE)", "check the PACS's log"),
        (2, 2): ("protocol version not supported", "the peer wants another DICOM UL version"),
        (3, 1): ("temporary congestion", "the PACS is busy: try again later"),
        (3, 2): (
            "local limit exceeded",
            "the PACS has too many open associations (perhaps for this AE title): "
            "try again later or with fewer parallel associations",
        ),
    }
    return table.get(
        (source, reason),
        (f"source {source}, reason {reason}", "check the PACS's log for the reason"),
    )


def _connect_failure(exc: OSError | None, target: Target) -> ConnectError:
    where = f"{target.host}:{target.port}"
    p = target.profile
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(
            f"connection refused by {where}: nothing accepts DICOM connections there",
            hint=f"check host and port in profile '{p}', and that the PACS's DICOM "
            "service is running",
        )
    if isinstance(exc, TimeoutError):
        return ConnectError(
            f"no answer from {where} within {target.timeout:g} s (connect timed out)",
            hint="a firewall may be dropping the packets, or the host or port is wrong; "
            "--timeout sets the limit",
        )
    if exc is not None:
        reason = exc.strerror or str(exc)
        return ConnectError(
            f"cannot connect to {where}: {reason}",
            hint=f"check host and port in profile '{p}' and the network path",
        )
    return ConnectError(f"cannot connect to {where}")


def _syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    return str(UID(uid).name)


def make_report(assoc: Association, seconds: float) -> AssociationReport:
    """Collect what the peer answered in its A-ASSOCIATE-AC."""
    acceptor = assoc.acceptor
    contexts: list[ContextResult] = []
    for cx in sorted(
        [*assoc.accepted_contexts, *assoc.rejected_contexts], key=lambda c: c.context_id or 0
    ):
        accepted = cx.result == 0x00
        syntaxes = (
            (str(cx.transfer_syntax[0]),) if accepted and cx.transfer_syntax else ()
        )
        contexts.append(
            ContextResult(
                abstract_syntax=str(cx.abstract_syntax),
                name=_syntax_name(str(cx.abstract_syntax)),
                accepted=accepted,
                result=cx.status,
                transfer_syntaxes=syntaxes,
            )
        )
    return AssociationReport(
        peer_ae=str(acceptor.ae_title),
        peer_max_pdu=int(acceptor.maximum_length or 0),
        peer_implementation_uid=str(acceptor.implementation_class_uid or ""),
        peer_implementation_version=str(acceptor.implementation_version_name or ""),
        contexts=contexts,
        seconds=seconds,
    )


@contextmanager
def open_association(
    target: Target,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    report: list[AssociationReport] | None = None,
    ext_neg: Sequence[Any] = (),
    handlers: Sequence[Any] = (),
    idle_timeout: bool = False,
) -> Iterator[Association]:
    """Associate with `target`, proposing `contexts` (abstract syntax, transfer syntaxes).

    Yields the established association and releases it on exit (aborts on
    an exception). Every failure to establish it becomes a ConnectError or
    RefusedError with a diagnosis. When `report` is a list, the association
    report is appended to it once established. `ext_neg` and `handlers` are
    passed to pynetdicom (role selection, C-STORE handler for C-GET). With
    `idle_timeout` the caller watches for idleness itself and DIMSE waits
    only poll (`POLL_SECONDS`) instead of failing after `timeout`.
    """
    import time

    from pynetdicom import AE, evt

    from medimg_cli.dimse.tracing import handlers as trace_handlers

    tune()
    resolving = time.perf_counter()
    address = resolve(target)
    dns = time.perf_counter() - resolving
    ae = AE(ae_title=target.calling_aet)
    ae.acse_timeout = target.timeout
    ae.dimse_timeout = target.timeout
    ae.network_timeout = target.timeout
    ae.connection_timeout = target.timeout
    ae.maximum_pdu_size = target.max_pdu
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, list(syntaxes))
    if target.user_identity is not None:
        ext_neg = [*ext_neg, target.user_identity.negotiation_item()]
    tls_args: tuple[Any, str] | None = None
    if target.tls is not None:
        from medimg_cli.dimse.tls import client_context

        tls_args = (client_context(target.tls), target.host)

    received: list[Any] = []

    def on_acse(event: Any) -> None:
        received.append(event.primitive)

    started = time.perf_counter()
    assoc = ae.associate(
        address,
        target.port,
        ae_title=target.called_aet,
        max_pdu=target.max_pdu,
        ext_neg=list(ext_neg) or None,
        evt_handlers=[(evt.EVT_ACSE_RECV, on_acse), *handlers, *trace_handlers()],
        tls_args=tls_args,
    )
    elapsed = time.perf_counter() - started
    if not assoc.is_established:
        if tls_args is not None:
            _tls_failure(assoc, target, tls_args[0])
        else:
            from medimg_cli.dimse.tls import looks_like_tls, plain_to_tls_error

            first = getattr(assoc, "medimg_first_bytes", None)
            if first is not None and (looks_like_tls(first) or not first):
                raise plain_to_tls_error(target.host, target.port, target.profile,
                                         closed=not first)
        raise _association_failure(assoc, target, received)
    connect = float(getattr(assoc, "medimg_connect_seconds", 0.0))
    handshake = 0.0
    if tls_args is not None:
        from medimg_cli.dimse.tls import record_of

        record = record_of(tls_args[0])
        if record is not None:
            connect, handshake = record.connect, record.handshake
    this_report = make_report(assoc, elapsed)
    this_report.timing = {"dns": dns, "connect": connect}
    if tls_args is not None:
        this_report.timing["tls_handshake"] = handshake
    this_report.timing["associate"] = elapsed - connect - handshake
    if target.user_identity is not None:
        from medimg_cli.dimse.user_identity import answer_of

        this_report.user_identity = answer_of(assoc, target.user_identity).as_dict(
            target.user_identity)
    if report is not None:
        report.append(this_report)
    if idle_timeout:
        assoc.dimse_timeout = POLL_SECONDS
    try:
        yield assoc
    except BaseException:
        if assoc.is_established:
            assoc.abort()
        raise
    else:
        if assoc.is_established:
            releasing = time.perf_counter()
            assoc.release()
            this_report.timing["release"] = time.perf_counter() - releasing


def _tls_failure(assoc: Association, target: Target, context: Any) -> None:
    """Raise the diagnosis of a TLS failure during connect or negotiation, if it was one."""
    from medimg_cli.dimse.tls import diagnose, record_of

    record = record_of(context)
    if record is None or record.error is None or target.tls is None:
        return
    if not record.handshake_started and isinstance(record.error, OSError):
        raise _connect_failure(record.error, target)
    error = diagnose(record.error, record, target.tls, target.host, target.port)
    if error is not None:
        raise error


def _association_failure(
    assoc: Association, target: Target, received: list[Any]
) -> ConnectError | RefusedError:
    connect_error = getattr(assoc, "medimg_connect_error", None)
    if connect_error is not None:
        return _connect_failure(connect_error, target)
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        source = int(getattr(rsp, "result_source", 0) or 0)
        reason = int(getattr(rsp, "diagnostic", 0) or 0)
        result = int(getattr(rsp, "result", 1) or 1)
        meaning, hint = _reject_diagnosis(source, reason, target)
        if target.user_identity is not None:
            from medimg_cli.dimse.user_identity import rejected as identity_refused

            meaning, hint = identity_refused(target.user_identity, meaning, target.profile)
        kind = "transient" if result == 2 else "permanent"
        return RefusedError(f"association rejected ({kind}): {meaning}", hint=hint)
    rejected = [cx for cx in assoc.rejected_contexts]
    if rejected and not assoc.accepted_contexts:
        names = ", ".join(sorted({_syntax_name(str(cx.abstract_syntax)) for cx in rejected}))
        return RefusedError(
            f"association refused: the peer accepted none of the proposed services ({names})",
            hint="the PACS does not offer that service to us: check its configuration "
            "for our AE title",
        )
    from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT

    for primitive in received:
        if isinstance(primitive, A_P_ABORT):
            return RefusedError(
                "association aborted by the network provider during negotiation "
                f"(reason {primitive.provider_reason})",
                hint="the peer's DICOM layer broke off: check the PACS's log",
            )
        if isinstance(primitive, A_ABORT):
            return RefusedError(
                "association aborted by the peer during negotiation",
                hint="it accepted the TCP connection but not our request: often an IP "
                "address or AE title filter, or a port that expects TLS (tls = true)",
            )
    if assoc.is_aborted and not received:
        return ConnectError(
            f"no answer to the association request from {target.host}:{target.port} "
            f"within {target.timeout:g} s",
            hint="the port accepts connections but does not answer DICOM: is it the "
            "DICOM port, and does it expect TLS?",
        )
    return RefusedError("association failed", hint="rerun with -vv for the exchange")
