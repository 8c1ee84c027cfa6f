"""Hand-written DIMSE command sets and event-driven idling for pynetdicom's hot paths.

PERFORMANCE.md measured that pynetdicom spends more time building and
parsing command sets with pydicom than the network exchange takes: encoding
a C-STORE-RSP 520-870 µs, decoding a command set and building its primitive
570 µs. The command set is a handful of group 0000 elements in Implicit VR
Little Endian; these two patches write and read them directly and hand
everything unusual back to pynetdicom's own code. `install()` is called by
`association.tune()`; -vv (pynetdicom's own DIMSE log) turns the command-set
part off.

Idling: pynetdicom's network thread sleeps 1 ms whenever it finds nothing to
do, and an acceptor's association thread sleeps 1 ms on every pass. With one
message at a time in each direction, these sleeps were ~75% of a small
C-GET's wall time here. `install()` makes those sleeps end early instead: the
network thread waits in select() on its socket and a wake-up pipe written by
`send_pdu`; the acceptor thread waits on its DIMSE message queue. The loops
themselves are untouched (a sleep that ends sooner changes no logic, so the
pause handshake PERFORMANCE.md warns about is not involved), and each wait
is still bounded, so timers and kill flags are seen as before.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

_US = struct.Struct("<HHIH")  # tag, length 2, value
_UL = struct.Struct("<HHII")

# Command elements a primitive takes: tag -> (keyword, VR).
_COMMAND_ELEMENTS: dict[int, tuple[str, str]] = {
    0x00000002: ("AffectedSOPClassUID", "UI"),
    0x00000100: ("CommandField", "US"),
    0x00000110: ("MessageID", "US"),
    0x00000120: ("MessageIDBeingRespondedTo", "US"),
    0x00000600: ("MoveDestination", "AE"),
    0x00000700: ("Priority", "US"),
    0x00000800: ("CommandDataSetType", "US"),
    0x00000900: ("Status", "US"),
    0x00000902: ("ErrorComment", "LO"),
    0x00001000: ("AffectedSOPInstanceUID", "UI"),
    0x00001020: ("NumberOfRemainingSuboperations", "US"),
    0x00001021: ("NumberOfCompletedSuboperations", "US"),
    0x00001022: ("NumberOfFailedSuboperations", "US"),
    0x00001023: ("NumberOfWarningSuboperations", "US"),
    0x00001030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x00001031: ("MoveOriginatorMessageID", "US"),
}
_FAST_MESSAGES = frozenset(
    {"C_STORE_RQ", "C_STORE_RSP", "C_FIND_RSP", "C_MOVE_RSP", "C_GET_RSP", "C_ECHO_RSP"}
)
_installed = False
# Longest idle wait: how late a kill flag or a timer may be noticed.
DUL_MAX_WAIT = 0.05
ACCEPTOR_MAX_WAIT = 0.005
_waiting_duls: dict[int, Any] = {}  # thread ident -> DULServiceProvider
_waiting_acceptors: dict[int, Any] = {}  # thread ident -> Association


def _dul_idle(dul: Any, seconds: float) -> None:
    """The network thread has nothing to do: wait for data, a PDU to send, or a timeout."""
    if not dul.to_provider_queue.empty() or not dul.event_queue.empty() or dul._kill_thread:
        return
    fds: list[Any] = [dul.medimg_wake[0]]
    transport = dul.socket
    sock = getattr(transport, "socket", None) if transport is not None else None
    if sock is not None and getattr(transport, "_is_connected", False):
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():
            return  # TLS has decrypted bytes buffered: select would not see them
        fds.append(sock)
    try:
        ready, _, _ = select.select(fds, [], [], max(seconds, DUL_MAX_WAIT))
    except (OSError, ValueError):
        return  # the socket closed: the loop notices on its next pass
    if dul.medimg_wake[0] in ready:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(dul.medimg_wake[0], 4096)


def _acceptor_idle(assoc: Any) -> None:
    """An acceptor's association thread: wait for a decoded DIMSE message, briefly."""
    messages = assoc.dimse.msg_queue
    with messages.not_empty:
        if not messages._qsize():
            messages.not_empty.wait(ACCEPTOR_MAX_WAIT)


class _DulTime:
    """pynetdicom.dul's `time`, whose `sleep` in a network thread waits for events."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        dul = _waiting_duls.get(threading.get_ident())
        if dul is None:
            time.sleep(seconds)
        else:
            _dul_idle(dul, seconds)


class _AssociationTime:
    """pynetdicom.association's `time`, whose 1 ms reactor sleep waits for a message."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        assoc = _waiting_acceptors.get(threading.get_ident())
        if assoc is None or seconds != 0.001:
            time.sleep(seconds)
        else:
            _acceptor_idle(assoc)


def _install_reactor_guard() -> None:
    """Close pynetdicom's pause-handshake race (PERFORMANCE.md: "lost a reply").

    A `send_*` call clears `_reactor_checkpoint` and waits for `_is_paused`,
    but the association thread sets `_is_paused` just before a checkpoint wait
    that may return at once, and then takes the next DIMSE message off the
    queue itself: with a fast peer, that is the reply the caller waits for. Here
    the association thread may take a message only while nobody holds the
    checkpoint; otherwise it finds the queue empty and goes round to pause.
    """
    from pynetdicom import dimse

    original_get_msg = dimse.DIMSEServiceProvider.get_msg

    def get_msg(self: Any, block: bool = False) -> Any:
        assoc = self.assoc
        if (
            not block
            and threading.get_ident() == assoc.ident
            and not assoc._reactor_checkpoint.is_set()
        ):
            return None, None
        return original_get_msg(self, block)

    dimse.DIMSEServiceProvider.get_msg = get_msg  # type: ignore[method-assign]


def _install_bulk_recv() -> None:
    """Read a PDU's body in as few calls as the socket allows (pynetdicom reads 4 KiB at a
    time: 128 calls for a 512 KB instance)."""
    from pynetdicom.transport import AssociationSocket

    def recv(self: Any, nr_bytes: int) -> bytearray:
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        nr_read = 0
        while nr_read < nr_bytes:
            count = self.socket.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not count:
                del view
                return buffer[:nr_read]
            nr_read += count
        return buffer

    AssociationSocket.recv = recv  # type: ignore[method-assign]


def _install_idle_waits() -> None:
    from pynetdicom import association, dul

    original_dul_run = dul.DULServiceProvider.run_reactor
    original_send_pdu = dul.DULServiceProvider.send_pdu
    original_kill = dul.DULServiceProvider.kill_dul
    original_assoc_run = association.Association._run_reactor

    def wake(provider: Any) -> None:
        pipe = getattr(provider, "medimg_wake", None)
        if pipe is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(pipe[1], b"!")

    def dul_run(self: Any) -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self.medimg_wake = (read_end, write_end)
        ident = threading.get_ident()
        _waiting_duls[ident] = self
        try:
            original_dul_run(self)
        finally:
            _waiting_duls.pop(ident, None)
            self.medimg_wake = None
            os.close(read_end)
            os.close(write_end)

    def send_pdu(self: Any, primitive: Any) -> None:
        original_send_pdu(self, primitive)
        wake(self)

    def kill_dul(self: Any) -> None:
        original_kill(self)
        wake(self)

    def assoc_run(self: Any) -> None:
        ident = threading.get_ident()
        if self.is_acceptor:
            _waiting_acceptors[ident] = self
        try:
            original_assoc_run(self)
        finally:
            _waiting_acceptors.pop(ident, None)

    dul.DULServiceProvider.run_reactor = dul_run  # type: ignore[method-assign]
    dul.DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]
    dul.DULServiceProvider.kill_dul = kill_dul  # type: ignore[method-assign]
    association.Association._run_reactor = assoc_run  # type: ignore[method-assign]
    setattr(dul, "time", _DulTime())  # noqa: B010
    setattr(association, "time", _AssociationTime())  # noqa: B010


def parse_command_set(data: bytes) -> dict[str, Any] | None:
    """Keyword -> value of an Implicit VR LE command set, or None if unusual."""
    values: dict[str, Any] = {}
    pos, end = 0, len(data)
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        raw = data[pos : pos + length]
        pos += length
        tag = group << 16 | elem
        if tag == 0x00000000:
            continue
        known = _COMMAND_ELEMENTS.get(tag)
        if known is None or len(raw) != length:
            return None
        keyword, vr = known
        if vr == "US":
            if length != 2:
                return None
            values[keyword] = int.from_bytes(raw, "little")
        elif vr == "UI":
            values[keyword] = raw.rstrip(b"\x00 ").decode("ascii")
        else:
            values[keyword] = raw.decode("latin_1").strip(" \x00")
    return values if pos == end else None


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def store_rsp_command(
    sop_class: str, msg_id: int, status: int, sop_instance: str
) -> bytes:
    """The command set of a C-STORE-RSP (PS3.7 9.3.1.2), Implicit VR Little Endian."""
    body = b"".join(
        [
            _element(0x00000002, _uid(sop_class)),
            _element(0x00000100, struct.pack("<H", 0x8001)),
            _element(0x00000120, struct.pack("<H", msg_id)),
            _element(0x00000800, struct.pack("<H", 0x0101)),
            _element(0x00000900, struct.pack("<H", status)),
            _element(0x00001000, _uid(sop_instance)),
        ]
    )
    return _element(0x00000000, struct.pack("<I", len(body))) + body


def install() -> None:
    """Patch pynetdicom (once) to use the hand-written command sets."""
    global _installed
    if _installed:
        return
    from pynetdicom import dimse, dimse_messages
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu_primitives import P_DATA

    original_to_primitive: Callable[..., Any] = dimse_messages.DIMSEMessage.message_to_primitive
    original_send: Callable[..., Any] = dimse.DIMSEServiceProvider.send_msg
    msg_to_primitive = dimse_messages._MSG_TO_PRIMITVE
    dataset_keywords = dimse_messages._DATASET_KEYWORDS

    def message_to_primitive(self: Any) -> Any:
        name = self.__class__.__name__
        if not enabled or name not in _FAST_MESSAGES:
            return original_to_primitive(self)
        values = parse_command_set(self.encoded_command_set.getvalue())
        if values is None:
            return original_to_primitive(self)
        primitive: Any = msg_to_primitive[name[: name.rfind("_R")]]()
        for keyword, value in values.items():
            if hasattr(primitive, keyword):
                setattr(primitive, keyword, value)
        if name in dataset_keywords:
            setattr(primitive, dataset_keywords[name], self.data_set)
        primitive._context_id = self.context_id
        primitive._dataset_path = self._data_set_path
        primitive._dataset_file = self._data_set_file
        return primitive

    def send_msg(self: Any, primitive: Any, context_id: int) -> None:
        if (
            enabled
            and type(primitive) is C_STORE
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and primitive.AffectedSOPClassUID
            and primitive.AffectedSOPInstanceUID
            and primitive.Status is not None
            and (not self.maximum_pdu_size or self.maximum_pdu_size > 512)
        ):
            command = store_rsp_command(
                str(primitive.AffectedSOPClassUID),
                int(primitive.MessageIDBeingRespondedTo),
                int(primitive.Status),
                str(primitive.AffectedSOPInstanceUID),
            )
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
            self.dul.send_pdu(pdata)
            return
        original_send(self, primitive, context_id)

    dimse_messages.DIMSEMessage.message_to_primitive = message_to_primitive  # type: ignore[method-assign]
    dimse.DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]
    _install_reactor_guard()
    _install_bulk_recv()
    _install_idle_waits()
    _installed = True


enabled = True


def disable() -> None:
    """Back to pynetdicom's own encoding (for -vv, whose log reads the command sets)."""
    global enabled
    enabled = False
