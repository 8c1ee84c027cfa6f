"""The incremental multipart/related reader: any chunking, and each fault."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medimg_cli.dicomweb.multipart import (
    BoundaryError,
    MultipartReader,
    PartData,
    PartEnd,
    PartHeaderError,
    PartStart,
    TruncatedError,
    boundary_from_content_type,
)
from medimg_cli.errors import ExitCode

BOUNDARY = "b0und4ry-x"


def body(parts: list[tuple[dict[str, str], bytes]], boundary: str = BOUNDARY,
         preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = [preamble]
    for headers, data in parts:
        out.append(b"--" + boundary.encode() + b"\r\n")
        out.extend(f"{k}: {v}\r\n".encode() for k, v in headers.items())
        out.append(b"\r\n" + data + b"\r\n")
    out.append(b"--" + boundary.encode() + b"--" + epilogue)
    return b"".join(out)


def parse(chunks: list[bytes], boundary: str = BOUNDARY,
          close: bool = True) -> list[tuple[dict[str, str], bytes]]:
    """The parts as (headers, body); checks the event order on the way."""
    reader = MultipartReader(boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    current: list[bytes] | None = None
    for chunk in chunks:
        for event in reader.feed(chunk):
            if isinstance(event, PartStart):
                assert current is None
                assert event.index == len(parts)
                current = []
                headers = event.headers
            elif isinstance(event, PartData):
                assert current is not None and event.data
                current.append(event.data)
            else:
                assert isinstance(event, PartEnd) and current is not None
                parts.append((headers, b"".join(current)))
                current = None
    if close:
        reader.close()
    return parts


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


_part_body = st.binary(max_size=300).filter(lambda b: b"\r\n--" + BOUNDARY.encode() not in b)
_headers = st.dictionaries(
    st.sampled_from(["content-type", "content-location", "content-length", "x-extra"]),
    st.text(alphabet="abcdefghij/;=.0123456789 \"", min_size=1, max_size=30).map(str.strip)
    .filter(bool),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.tuples(_headers, _part_body), max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    preamble=st.sampled_from([b"", b"preamble text\r\n"]),
    epilogue=st.sampled_from([b"", b"\r\n", b"\r\nepilogue"]),
)
def test_any_chunking_gives_the_same_parts(
    parts: list[tuple[dict[str, str], bytes]], cuts: list[int], preamble: bytes,
    epilogue: bytes,
) -> None:
    data = body(parts, preamble=preamble, epilogue=epilogue)
    assert parse(split(data, cuts)) == parts
    assert parse([data]) == parts


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.tuples(_headers, _part_body), min_size=1, max_size=4),
       data=st.data())
def test_a_cut_anywhere_before_the_end_is_truncation(
    parts: list[tuple[dict[str, str], bytes]], data: st.DataObject
) -> None:
    whole = body(parts)
    # Anywhere after the first delimiter and before the closing one ends.
    first = len(b"--" + BOUNDARY.encode())
    cut = data.draw(st.integers(min_value=first, max_value=len(whole) - 1))
    with pytest.raises((TruncatedError, BoundaryError)) as info:
        parse(split(whole[:cut], [cut // 2, cut // 3]))
    assert info.value.exit_code == ExitCode.REMOTE


def test_single_byte_feeding_and_header_folding() -> None:
    raw = (b"--" + BOUNDARY.encode() + b"  \r\nContent-Type: application/dicom\r\n"
           b"X-Long: one\r\n two\r\n\r\nDICM-ish\r\n--" + BOUNDARY.encode()
           + b"\r\n\r\nsecond\r\n--" + BOUNDARY.encode() + b"--")
    got = parse([raw[i:i + 1] for i in range(len(raw))])
    assert got == [({"content-type": "application/dicom", "x-long": "one two"}, b"DICM-ish"),
                   ({}, b"second")]


def test_memory_stays_bounded_for_a_large_part() -> None:
    reader = MultipartReader(BOUNDARY)
    reader.feed(b"--" + BOUNDARY.encode() + b"\r\n\r\n")
    total = 0
    for _ in range(200):
        for event in reader.feed(b"x" * 65536):
            if isinstance(event, PartData):
                total += len(event.data)
        assert len(reader._buf) < len(BOUNDARY) + 8
    for event in reader.feed(b"\r\n--" + BOUNDARY.encode() + b"--"):
        if isinstance(event, PartData):
            total += len(event.data)
    reader.close()
    assert total == 200 * 65536


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (f'multipart/related; type="application/dicom"; boundary={BOUNDARY}', BOUNDARY),
        (f'multipart/related; boundary="{BOUNDARY}"; type="application/dicom"', BOUNDARY),
        ('Multipart/Related;Boundary="a b;c"', "a b;c"),
    ],
)
def test_boundary_from_content_type(content_type: str, expected: str) -> None:
    assert boundary_from_content_type(content_type) == expected


@pytest.mark.parametrize(
    "content_type",
    ["application/dicom", 'multipart/related; type="application/dicom"',
     "multipart/related; boundary=", 'multipart/related; boundary=""'],
)
def test_content_type_without_a_boundary_is_an_error(content_type: str) -> None:
    with pytest.raises(BoundaryError):
        boundary_from_content_type(content_type)


def test_wrong_boundary_fails_early_not_at_the_end() -> None:
    reader = MultipartReader("other")
    with pytest.raises(BoundaryError, match="no multipart boundary 'other'"):
        for _ in range(100):
            reader.feed(body([({}, b"y" * 4096)]) * 4)


def test_wrong_boundary_in_a_short_body() -> None:
    with pytest.raises(BoundaryError, match="never uses the boundary 'other'"):
        parse([body([({}, b"abc")])], boundary="other")


def test_truncated_inside_a_part_names_the_part() -> None:
    whole = body([({}, b"first"), ({"content-type": "application/dicom"}, b"second part")])
    with pytest.raises(TruncatedError, match="inside part 2"):
        parse([whole[: whole.index(b"second") + 3]])


def test_missing_closing_delimiter() -> None:
    whole = body([({}, b"first")])
    with pytest.raises(TruncatedError, match="after part 1 without the closing delimiter"):
        parse([whole[: whole.rindex(b"--")]])


@pytest.mark.parametrize(
    "header",
    [b"no colon here", b"bad name: x", b": empty name", b"\xff\xfe: binary"],
)
def test_malformed_part_headers(header: bytes) -> None:
    raw = b"--" + BOUNDARY.encode() + b"\r\n" + header + b"\r\n\r\ndata\r\n--" + \
        BOUNDARY.encode() + b"--"
    with pytest.raises(PartHeaderError, match="part 1"):
        parse([raw])


def test_oversized_header_block() -> None:
    raw = b"--" + BOUNDARY.encode() + b"\r\nX-Big: " + b"a" * 20000
    with pytest.raises(PartHeaderError, match="header block over"):
        parse([raw], close=False)


def test_garbage_after_a_delimiter() -> None:
    raw = body([({}, b"one")]).replace(b"--" + BOUNDARY.encode() + b"--",
                                       b"--" + BOUNDARY.encode() + b"garbage\r\n")
    with pytest.raises(BoundaryError, match="bad delimiter line"):
        parse([raw])
