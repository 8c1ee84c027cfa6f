"""DIMSE status codes in words, and the "no response" diagnosis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medimg_cli.errors import ConnectError, RefusedError

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from medimg_cli.dimse.association import Target


def describe_status(code: int, service: str) -> str:
    """`0xA900 Failure: Identifier Does Not Match SOP Class` style text."""
    from pynetdicom import status as st

    tables: dict[str, Any] = {
        "echo": st.VERIFICATION_SERVICE_CLASS_STATUS,
        "find": st.QR_FIND_SERVICE_CLASS_STATUS,
        "move": st.QR_MOVE_SERVICE_CLASS_STATUS,
        "get": st.QR_GET_SERVICE_CLASS_STATUS,
        "store": st.STORAGE_SERVICE_CLASS_STATUS,
    }
    table = tables.get(service, st.GENERAL_STATUS)
    category, text = table.get(code, (st.code_to_category(code), ""))
    return f"0x{code:04X} {category}" + (f": {text}" if text else "")


def no_response_error(
    assoc: Association, target: Target, what: str
) -> ConnectError | RefusedError:
    """No response message arrived: aborted by the peer, connection lost, or timeout.

    Tells them apart before pynetdicom's own handling aborts a timed-out
    association, then lets it do so.
    """
    aborted = assoc.acse.is_aborted("a-abort")
    lost = assoc.acse.is_aborted("a-p-abort")
    assoc._handle_no_response()
    if aborted:
        return RefusedError(
            f"the peer aborted the association during {what}",
            hint="check the PACS's log; rerun with -vv for the exchange",
        )
    if lost:
        return ConnectError(
            f"the connection to {target.host}:{target.port} was lost during {what}",
            hint="the PACS closed it or the network dropped it; check the PACS's log",
        )
    return ConnectError(
        f"no {what} response from {target.host}:{target.port} within {target.timeout:g} s",
        hint="the PACS may be overloaded, or the network path broken; --timeout sets the limit",
    )


def check_no_response(status: Any, assoc: Association, target: Target, what: str) -> None:
    """pynetdicom answers an empty status when the exchange broke: say why."""
    if status is not None and "Status" in status:
        return
    if assoc.is_aborted:
        raise RefusedError(
            f"the peer aborted the association during {what}",
            hint="check the PACS's log; rerun with -vv for the exchange",
        )
    raise ConnectError(
        f"no {what} response from {target.host}:{target.port} within {target.timeout:g} s",
        hint="the PACS may be overloaded, or the network path broken; --timeout sets the limit",
    )
