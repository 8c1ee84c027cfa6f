"""DICOM Part 10 files at the byte level: the file meta group, read without pydicom.

Shared by WADO-RS (naming a part from its first bytes) and the sandbox
(indexing what it receives); both only need the meta's UIDs and where the
data set starts.
"""

from __future__ import annotations

import struct

# Explicit VR with a 4-byte length (PS3.5 7.1.2); the file meta is always explicit VR LE.
_LONG_VRS = (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR")
_TEXT_VRS = (b"UI", b"SH", b"AE", b"CS", b"LO")
REQUIRED = ((0x0002, "MediaStorageSOPClassUID"), (0x0003, "MediaStorageSOPInstanceUID"),
            (0x0010, "TransferSyntaxUID"))


def parse_file_meta(
    head: bytes, required: tuple[tuple[int, str], ...] = REQUIRED[1:]
) -> tuple[dict[int, str], int]:
    """The file meta's text values (by element number of group 0002) and where the data set
    starts. Raises ValueError naming what is wrong: no `DICM` prefix, a truncated meta, or a
    `required` element missing (by default the SOP instance UID and the transfer syntax)."""
    if len(head) < 132 or head[128:132] != b"DICM":
        raise ValueError("no 'DICM' prefix at byte 128")
    pos = 132
    values: dict[int, str] = {}
    while pos + 8 <= len(head):
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", head, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            pos += 8
        if pos + length > len(head):
            raise ValueError("the file meta is truncated")
        if vr in _TEXT_VRS:
            values[elem] = head[pos : pos + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos += length
    for elem, name in required:
        if not values.get(elem):
            raise ValueError(f"the file meta lacks {name}")
    return values, pos
