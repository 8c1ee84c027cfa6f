"""The fast DICOM JSON reader gives exactly what pydicom gives, for any flat dataset."""

from __future__ import annotations

import datetime as dt
from io import BytesIO
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import DicomDictionary
from pydicom.filereader import read_dataset
from pynetdicom.dsutils import encode

from medimg_cli.dimse.dicomjson import elements_to_json, encoded_to_json, parse_flat


def tag_for_vr(vr: str, vm: str = "1-n") -> int:
    """A current (non-retired) dictionary tag of this VR, for test datasets."""
    return next(
        tag
        for tag, (entry_vr, entry_vm, _, retired, _) in sorted(DicomDictionary.items())
        if entry_vr == vr and entry_vm == vm and not retired and tag >> 16 > 0x0008
    )


LATIN = st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                      blacklist_characters="\\^=\x7f", blacklist_categories=("Cc",))
UNICODE = st.characters(blacklist_characters="\\^=", blacklist_categories=("Cc", "Cs", "Zl",
                                                                        "Zp", "Co", "Cn"))


def text(alphabet: Any, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, max_size=max_size).map(str.strip)


def multi(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(values, min_size=1, max_size=3).map(lambda v: v[0] if len(v) == 1 else v)


def dataset(charset: str | None) -> st.SearchStrategy[Dataset]:
    alphabet = {None: st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                    blacklist_characters="\\^="),
                "ISO_IR 100": LATIN, "ISO_IR 192": UNICODE}[charset]
    # Empty names inside a multi-valued PN crash pydicom's own to_json_dict (an
    # IndexError in 3.0.2), so the reference needs non-empty ones.
    person = st.lists(text(alphabet, 5), min_size=1, max_size=3).map("^".join).filter(bool)
    name = st.lists(person, min_size=1, max_size=3).map(lambda groups: "=".join(groups))
    date = st.dates(dt.date(1900, 1, 1), dt.date(2999, 12, 31)).map(lambda d: d.strftime("%Y%m%d"))
    uid = st.lists(st.integers(1, 10**6).map(str), min_size=2, max_size=6).map(".".join)
    ds_number = st.decimals(min_value=-10**6, max_value=10**6, places=3).map(
        lambda d: f"{d.normalize():f}"[:16])
    strategies: dict[int, st.SearchStrategy[Any]] = {
        0x00080060: st.from_regex(r"[A-Z0-9_ ]{0,16}", fullmatch=True).map(str.strip),
        0x00080061: multi(st.from_regex(r"[A-Z]{2}", fullmatch=True)),
        # Lengths in characters that stay within the VR's byte limit in UTF-8.
        0x00100020: text(alphabet, 16),
        0x00081030: text(alphabet, 16),
        0x00080050: text(alphabet, 4),
        0x00100010: name,
        0x00080090: multi(name),
        0x00080020: date,
        0x00080030: st.times().map(lambda t: t.strftime("%H%M%S")),
        0x0020000D: uid,
        0x00201208: st.integers(-(2**31), 2**31 - 1),
        0x00101030: ds_number,
        0x00280010: st.integers(0, 65535),
        tag_for_vr("SL", "1"): st.integers(-(2**31), 2**31 - 1),
        tag_for_vr("UL", "1"): st.integers(0, 2**32 - 1),
        tag_for_vr("FD", "1"): st.floats(allow_nan=False, allow_infinity=False),
        tag_for_vr("LT", "1"): text(alphabet, 200),
        tag_for_vr("ST", "1"): text(alphabet, 200),
    }

    @st.composite
    def build(draw: st.DrawFn) -> Dataset:
        ds = Dataset()
        if charset:
            ds.SpecificCharacterSet = charset
        for tag, strategy in strategies.items():
            if draw(st.booleans()):
                from pydicom.datadict import dictionary_VR

                value = draw(st.one_of(st.none(), strategy))
                ds.add_new(tag, dictionary_VR(tag), value)
        return ds

    return build()


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([None, "ISO_IR 100", "ISO_IR 192"]).flatmap(dataset), st.booleans())
def test_fast_json_equals_pydicom(ds: Dataset, implicit: bool) -> None:
    data = encode(ds, implicit, True)
    assert data is not None
    reference = read_dataset(BytesIO(data), implicit, True).to_json_dict()
    elements = parse_flat(data, implicit)
    assert elements is not None
    fast = elements_to_json(elements)
    assert fast is not None, "the fast path gave up on a plain dataset"
    assert fast == reference
    assert encoded_to_json(data, implicit) == reference


def test_sequences_and_iso2022_go_through_pydicom() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedStudySequence = [item]
    for implicit in (True, False):
        data = encode(ds, implicit, True)
        assert data is not None
        assert parse_flat(data, implicit) is None  # a sequence: not flat
        reference = read_dataset(BytesIO(data), implicit, True).to_json_dict()
        assert encoded_to_json(data, implicit) == reference
        assert reference["00100010"]["Value"][0]["Ideographic"] == "山田^太郎"


def test_header_scan_equals_pydicom_on_generated_files(dicom_data: Any) -> None:
    """The layout's few tags read by hand equal what pydicom reads, for every test file."""
    from pydicom import dcmread

    from medimg_cli.dimse.receive import read_header

    tags = (0x00100020, 0x0020000D, 0x0020000E, 0x00200011, 0x00080060)
    for instance in dicom_data.instances:
        ds = dcmread(instance.path)
        for syntax, implicit in (("1.2.840.10008.1.2.1", False), ("1.2.840.10008.1.2", True)):
            data = encode(ds, implicit, True)
            assert data is not None
            fast = read_header(data, syntax, tags)
            slow = {t: str(ds[t].value) for t in tags if t in ds and ds[t].value not in (None, "")}
            assert fast == slow
