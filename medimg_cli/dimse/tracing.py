"""DIMSE exchanges into the `--trace` file: pynetdicom event handlers.

`handlers()` returns the (event, handler) pairs to bind on an association (or
on the embedded SCP) while a trace is open: A-ASSOCIATE-RQ/AC/RJ with AE
titles, presentation contexts and user information, A-RELEASE and A-ABORT,
and every DIMSE message's command set and identifier (decoded; a C-STORE's
data set is only counted). The fast paths that bypass pynetdicom's events
are turned off while tracing (`fastpath.disable()`), except the hand-written
C-STORE exchange of `store.py`, which writes its own entries here
(`store_request`, `store_response`).
"""

from __future__ import annotations

from typing import Any

from medimg_cli import trace as tracing

_IDENTITY_TYPES = {1: "username", 2: "username and passcode", 3: "Kerberos ticket",
                   4: "SAML assertion", 5: "JSON web token"}
_RESULT = {0: "acceptance", 1: "user rejection", 2: "no reason (provider rejection)",
           3: "abstract syntax not supported", 4: "transfer syntaxes not supported"}


def handlers() -> list[tuple[Any, Any]]:
    """The event handlers that write to the open trace ([] when no trace is open)."""
    if tracing.current() is None:
        return []
    from pynetdicom import evt

    from medimg_cli.dimse import fastpath

    fastpath.disable()  # also in worker processes, which did not run the app's set-up
    return [
        (evt.EVT_CONN_OPEN, _conn_open),
        (evt.EVT_CONN_CLOSE, _conn_close),
        (evt.EVT_ACSE_SENT, _acse_sent),
        (evt.EVT_ACSE_RECV, _acse_recv),
        (evt.EVT_DIMSE_SENT, _dimse_sent),
        (evt.EVT_DIMSE_RECV, _dimse_recv),
    ]


def _peer(assoc: Any) -> str:
    remote = assoc.acceptor if assoc.is_requestor else assoc.requestor
    try:
        host, port = remote.address, remote.port
    except AttributeError:
        host, port = "?", 0
    ae = str(remote.ae_title or "").strip() or "?"
    return f"{ae}@{host}:{port}"


def _arrow(assoc: Any, sent: bool) -> str:
    local = str((assoc.requestor if assoc.is_requestor else assoc.acceptor).ae_title).strip()
    return f"{local} {'->' if sent else '<-'} {_peer(assoc)}"


def _conn_open(event: Any) -> None:
    trace = tracing.current()
    if trace is None:
        return
    address = event.address
    lines = []
    sock: Any = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    version = getattr(sock, "version", None)
    if sock is not None and callable(version):
        cipher = sock.cipher() if hasattr(sock, "cipher") else None
        lines.append(f"    TLS {version()}" + (f", cipher {cipher[0]}" if cipher else ""))
        try:
            cert = sock.getpeercert() or {}
        except (ValueError, OSError):
            cert = {}
        if cert:
            lines.append(f"    peer certificate: subject {_name(cert.get('subject'))}, "
                         f"issuer {_name(cert.get('issuer'))}, valid until "
                         f"{cert.get('notAfter', '?')}")
    trace.entry("NET", f"connection {'to' if event.assoc.is_requestor else 'from'} "
                f"{address[0]}:{address[1]} open", lines)


def _name(parts: Any) -> str:
    try:
        return ", ".join(f"{k}={v}" for rdn in parts for k, v in rdn)
    except (TypeError, ValueError):
        return "?"


def _conn_close(event: Any) -> None:
    trace = tracing.current()
    if trace is not None:
        trace.entry("NET", f"connection with {_peer(event.assoc)} closed")


def _acse_sent(event: Any) -> None:
    _acse(event, sent=True)


def _acse_recv(event: Any) -> None:
    _acse(event, sent=False)


def _acse(event: Any, *, sent: bool) -> None:
    trace = tracing.current()
    if trace is None:
        return
    from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT, A_RELEASE

    primitive = event.primitive
    arrow = _arrow(event.assoc, sent)
    if isinstance(primitive, A_ASSOCIATE):
        name, lines = _associate(primitive)
        trace.entry("ACSE", f"{arrow} {name}", lines)
    elif isinstance(primitive, A_RELEASE):
        kind = "A-RELEASE-RQ" if primitive.result is None else "A-RELEASE-RP"
        trace.entry("ACSE", f"{arrow} {kind}")
    elif isinstance(primitive, A_P_ABORT):
        trace.entry("ACSE", f"{arrow} A-P-ABORT", [
            f"    provider reason: {primitive.provider_reason}"])
    elif isinstance(primitive, A_ABORT):
        trace.entry("ACSE", f"{arrow} A-ABORT", [f"    source: {primitive.abort_source}"])


def _associate(primitive: Any) -> tuple[str, list[str]]:
    from pydicom.uid import UID

    if primitive.result is None:
        name = "A-ASSOCIATE-RQ"
    elif primitive.result == 0:
        name = "A-ASSOCIATE-AC"
    else:
        name = "A-ASSOCIATE-RJ"
    lines = [
        f"    calling AE title: {str(primitive.calling_ae_title or '').strip()}",
        f"    called AE title: {str(primitive.called_ae_title or '').strip()}",
    ]
    if name == "A-ASSOCIATE-RJ":
        lines.append(f"    result: {primitive.result_str} ({primitive.result}), source: "
                     f"{primitive.source_str} ({primitive.result_source}), reason: "
                     f"{primitive.reason_str} ({primitive.diagnostic})")
        return name, lines
    contexts = (primitive.presentation_context_definition_list if name == "A-ASSOCIATE-RQ"
                else primitive.presentation_context_definition_results_list) or []
    for cx in contexts:
        abstract = UID(str(cx.abstract_syntax)) if cx.abstract_syntax else None
        syntaxes = ", ".join(f"{UID(str(ts)).name}" for ts in cx.transfer_syntax)
        if name == "A-ASSOCIATE-RQ":
            what = abstract.name if abstract else "?"
            lines.append(f"    context {cx.context_id}: {abstract} ({what}): {syntaxes}")
        else:
            result = _RESULT.get(cx.result or 0, str(cx.result))
            lines.append(f"    context {cx.context_id}: {result}"
                         + (f", {syntaxes}" if cx.result == 0 else ""))
    for item in primitive.user_information or []:
        lines += _user_item(item)
    return name, lines


def _user_item(item: Any) -> list[str]:
    kind = type(item).__name__
    if kind == "MaximumLengthNotification":
        return [f"    max PDU length: {item.maximum_length_received}"]
    if kind == "ImplementationClassUIDNotification":
        return [f"    implementation class UID: {item.implementation_class_uid}"]
    if kind == "ImplementationVersionNameNotification":
        name = item.implementation_version_name
        return [f"    implementation version: "
                f"{name.decode('ascii', 'replace') if isinstance(name, bytes) else name}"]
    if kind == "SCP_SCU_RoleSelectionNegotiation":
        return [f"    role selection {item.sop_class_uid}: SCU {item.scu_role}, "
                f"SCP {item.scp_role}"]
    if kind == "AsynchronousOperationsWindowNegotiation":
        return [f"    asynchronous operations: {item.maximum_number_operations_invoked}/"
                f"{item.maximum_number_operations_performed}"]
    if kind == "UserIdentityNegotiation":
        if item.server_response is not None or item.user_identity_type is None:
            return [f"    user identity response: {tracing.SECRET}"]
        identity = _IDENTITY_TYPES.get(item.user_identity_type, str(item.user_identity_type))
        primary = item.primary_field or b""
        shown = (primary.decode("utf-8", "replace") if item.user_identity_type in (1, 2)
                 else tracing.SECRET)
        line = (f"    user identity: {identity}, positive response requested: "
                f"{bool(item.positive_response_requested)}, primary field: {shown}")
        if item.user_identity_type == 2:
            line += f", passcode: {tracing.SECRET}"
        return [line]
    return [f"    {kind}"]


def _dimse_sent(event: Any) -> None:
    _dimse(event, sent=True)


def _dimse_recv(event: Any) -> None:
    _dimse(event, sent=False)


_IDENTIFIER_MESSAGES = frozenset({"C_FIND_RQ", "C_FIND_RSP", "C_MOVE_RQ", "C_MOVE_RSP",
                                  "C_GET_RQ", "C_GET_RSP", "N_ACTION_RQ", "N_EVENT_REPORT_RQ"})


def _dimse(event: Any, *, sent: bool) -> None:
    trace = tracing.current()
    if trace is None:
        return
    message = event.message
    kind = type(message).__name__
    lines = [f"    presentation context {message.context_id}"]
    command = getattr(message, "command_set", None)
    if command is not None:
        lines += tracing.dataset_lines(command, trace.redactor)
    data: Any = getattr(message, "data_set", None)
    raw = data.getvalue() if hasattr(data, "getvalue") else b""
    if raw and kind in _IDENTIFIER_MESSAGES:
        syntax = _syntax(event.assoc, message.context_id)
        ds = tracing.decode_dataset(raw, syntax) if syntax else None
        if ds is None:
            lines.append(f"    identifier: {len(raw)} bytes (not readable)")
        else:
            lines.append("    identifier:")
            lines += tracing.dataset_lines(ds, trace.redactor, "      ")
    elif raw:
        lines.append(f"    data set: {len(raw)} bytes (not traced)")
    elif getattr(message, "_data_set_path", None) is not None:
        lines.append("    data set: streamed from a file (not traced)")
    trace.entry("DIMSE", f"{_arrow(event.assoc, sent)} {kind.replace('_', '-')}", lines)


def _syntax(assoc: Any, context_id: Any) -> str | None:
    for cx in assoc.accepted_contexts:
        if cx.context_id == context_id and cx.transfer_syntax:
            return str(cx.transfer_syntax[0])
    return None


def store_request(assoc: Any, context_id: int, msg_id: int, sop_class: str,
                  sop_instance: str, size: int) -> None:
    """An entry for a C-STORE-RQ sent by store.py's own exchange."""
    trace = tracing.current()
    if trace is None:
        return
    trace.entry("DIMSE", f"{_arrow(assoc, True)} C-STORE-RQ", [
        f"    presentation context {context_id}",
        f"    (0000,0002) UI AffectedSOPClassUID = {sop_class}",
        "    (0000,0100) US CommandField = 1",
        f"    (0000,0110) US MessageID = {msg_id}",
        f"    (0000,1000) UI AffectedSOPInstanceUID = {sop_instance}",
        f"    data set: {size} bytes (not traced)",
    ])


def store_response(assoc: Any, msg_id: int, status: int, comment: str) -> None:
    """An entry for a C-STORE-RSP read by store.py's own exchange."""
    trace = tracing.current()
    if trace is None:
        return
    lines = ["    (0000,0100) US CommandField = 32769",
             f"    (0000,0120) US MessageIDBeingRespondedTo = {msg_id}",
             f"    (0000,0900) US Status = 0x{status:04X}"]
    if comment:
        lines.append(f"    (0000,0902) LO ErrorComment = {trace.redactor.text(comment)}")
    trace.entry("DIMSE", f"{_arrow(assoc, False)} C-STORE-RSP", lines)
