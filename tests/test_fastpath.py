"""Hand-written command sets are byte-identical to pynetdicom's own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pynetdicom.dimse_messages import C_FIND_RSP, C_MOVE_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_FIND, C_MOVE, C_STORE
from pynetdicom.dsutils import encode

from medimg_cli.dimse.fastpath import parse_command_set, store_rsp_command

uids = st.lists(st.integers(1, 10**6).map(str), min_size=2, max_size=8).map(".".join)


@given(uids, uids, st.integers(1, 65535), st.sampled_from([0x0000, 0xA700, 0xB000, 0xC210]))
def test_store_rsp_is_byte_identical_to_pynetdicom(
    sop_class: str, sop_instance: str, msg_id: int, status: int
) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert store_rsp_command(sop_class, msg_id, status, sop_instance) == encode(
        message.command_set, True, True)


@given(uids, uids, st.integers(1, 65535), st.integers(0, 65535))
def test_parsed_command_sets_match_pynetdicom(
    sop_class: str, sop_instance: str, msg_id: int, count: int
) -> None:
    store = C_STORE()
    store.MessageID = msg_id
    store.AffectedSOPClassUID = sop_class
    store.AffectedSOPInstanceUID = sop_instance
    store.Priority = 2
    store.MoveOriginatorApplicationEntityTitle = "ORTHANC"
    store.MoveOriginatorMessageID = 7
    move = C_MOVE()
    move.MessageIDBeingRespondedTo = msg_id
    move.AffectedSOPClassUID = sop_class
    move.Status = 0xFF00
    move.NumberOfRemainingSuboperations = count
    move.NumberOfCompletedSuboperations = count
    move.NumberOfFailedSuboperations = 0
    move.NumberOfWarningSuboperations = 1
    find = C_FIND()
    find.MessageIDBeingRespondedTo = msg_id
    find.AffectedSOPClassUID = sop_class
    find.Status = 0xFF00
    for primitive, message in ((store, C_STORE_RQ()), (move, C_MOVE_RSP()),
                               (find, C_FIND_RSP())):
        message.primitive_to_message(primitive)  # type: ignore[arg-type]
        encoded = encode(message.command_set, True, True)
        assert encoded is not None
        parsed = parse_command_set(encoded)
        assert parsed is not None
        for element in message.command_set:
            if element.keyword in ("CommandGroupLength",):
                continue
            assert parsed[element.keyword] == element.value, element.keyword


def test_unusual_command_sets_are_left_to_pynetdicom() -> None:
    failure = C_FIND()
    failure.MessageIDBeingRespondedTo = 1
    failure.AffectedSOPClassUID = "1.2.3"
    failure.Status = 0xA900
    failure.OffendingElement = [0x00100010]
    message = C_FIND_RSP()
    message.primitive_to_message(failure)
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    assert parse_command_set(encoded) is None
