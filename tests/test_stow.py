"""`medimg stow` to a DIMSE profile (C-STORE), against real peers on loopback.

Orthanc and DCMTK's storescp are the real SCPs; a pynetdicom storage SCP that
the test controls answers failure statuses, counts what arrives per
association and stalls on purpose, which neither real peer can be made to do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import MEDIMG, medimg, value, write_config
from dicom_data import Manifest
from peers import Orthanc, PeerPool, Storescp, free_port

from medimg_cli.dimse.association import Target
from medimg_cli.dimse.store import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    VERIFICATION,
    CorruptFileError,
    DicomFile,
    FileResult,
    NotDicomError,
    check_structure,
    plan_associations,
    read_file_meta,
    stow,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def config_for(tmp_path: Path, toml: str) -> Path:
    return write_config(tmp_path / "c.toml", toml)


def dataset_bytes(path: Path) -> bytes:
    """The file's bytes after its meta information."""
    return path.read_bytes()[read_file_meta(path).offset :]


def by_uid(paths: list[Path]) -> dict[str, Path]:
    return {read_file_meta(p).sop_instance_uid: p for p in paths}


def copy_files(paths: list[Path], into: Path) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    copies = []
    for i, path in enumerate(paths):
        copy = into / f"{i:03d}.dcm"
        shutil.copyfile(path, copy)
        copies.append(copy)
    return copies


# --------------------------------------------------------------------------
# Real peers


def test_stow_to_orthanc_then_find_sees_every_study(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    orthanc: Orthanc = fresh_peers.orthanc(dicomweb=False)
    config = config_for(tmp_path, orthanc.profile_toml("pacs"))
    result = medimg("stow", "pacs", str(dicom_data.root), config=config)
    assert result.code == 0, result.stderr
    lines = result.jsonl()
    assert sorted(line["path"] for line in lines) == sorted(map(str, dicom_data.paths))
    assert {(line["status"], line["code"]) for line in lines} == {("stored", 0)}
    assert {line["sop_instance_uid"] for line in lines} == {
        i.sop_instance_uid for i in dicom_data.instances}
    assert f"stow: {len(dicom_data.paths)} done, 0 warnings, 0 failed" in result.stderr

    assert orthanc.statistics()["CountInstances"] == len(dicom_data.instances)
    found = medimg("find", "pacs", "--format", "jsonl", config=config)
    assert found.code == 0, found.stderr
    assert {value(r, "0020000D") for r in found.jsonl()} == {
        s.study_uid for s in dicom_data.studies}


def test_stow_to_storescp_sends_each_data_set_byte_for_byte(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    scp: Storescp = fresh_peers.storescp(extra_args=["+B"])  # write exactly what arrives
    config = config_for(tmp_path, scp.profile_toml("scp"))
    sent = dicom_data.paths[:12]
    result = medimg("stow", "scp", *map(str, sent), config=config)
    assert result.code == 0, result.stderr
    received = by_uid(scp.received_files())
    sources = by_uid(sent)
    assert received.keys() == sources.keys()
    for uid, source in sources.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(source), uid


def test_large_files_go_in_peer_sized_fragments_byte_for_byte(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    from pydicom import dcmread

    from medimg_cli.dimse.store import WHOLE_FILE_LIMIT

    scp = fresh_peers.storescp(extra_args=["+B", "-pdu", "16384"])
    made = []
    for n, side in ((1, 256), (2, 1600)):  # 128 KiB (read whole), 5 MB (streamed)
        ds = dcmread(dicom_data.paths[0])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.{n}"
        ds.Rows = ds.Columns = side
        ds.PixelData = bytes(range(256)) * (side * side * 2 // 256)
        path = tmp_path / f"big{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        made.append(path)
    assert made[0].stat().st_size < WHOLE_FILE_LIMIT < made[1].stat().st_size
    config = config_for(tmp_path, scp.profile_toml("scp"))
    result = medimg("stow", "scp", *map(str, made), config=config)
    assert result.code == 0, result.stderr
    received = by_uid(scp.received_files())
    for uid, source in by_uid(made).items():
        assert dataset_bytes(received[uid]) == dataset_bytes(source), uid


@pytest.fixture
def mixed_dir(tmp_path: Path, dicom_data: Manifest) -> tuple[Path, list[Path], list[Path]]:
    """Good files, a text file, a truncated DICOM file and DICM followed by garbage."""
    folder = tmp_path / "mixed"
    good = copy_files(dicom_data.paths[:5], folder / "good")
    (folder / "notes.txt").write_text("not an image\n")
    data = dicom_data.paths[5].read_bytes()
    truncated = folder / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 37])  # cut inside Pixel Data
    garbage = folder / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(7, 250)) * 3)
    return folder, good, [truncated, garbage]


def test_bad_files_fail_alone_and_the_good_ones_are_stored(
    tmp_path: Path, storescp: Storescp, mixed_dir: tuple[Path, list[Path], list[Path]]
) -> None:
    folder, good, corrupt = mixed_dir
    config = config_for(tmp_path, storescp.profile_toml("scp"))
    result = medimg("stow", "scp", str(folder), config=config)
    assert result.code == 6, result.stderr
    assert by_uid(storescp.received_files()).keys() == by_uid(good).keys()
    status = {Path(line["path"]).name: line["status"] for line in result.jsonl()}
    assert status == {**{p.name: "stored" for p in good}, "notes.txt": "skipped",
                      "truncated.dcm": "failed", "garbage.dcm": "failed"}
    err = result.stderr
    assert f"skipped: {folder / 'notes.txt'}: not a DICOM file" in err
    assert f"failed: {corrupt[0]}: corrupt DICOM file: truncated" in err
    assert f"failed: {corrupt[1]}: corrupt DICOM file: file meta lacks" in err
    assert "stow: 5 done, 0 warnings, 2 failed, 1 skipped" in err
    assert "Traceback" not in err


def test_report_lists_every_file_with_its_outcome(
    tmp_path: Path, storescp: Storescp, mixed_dir: tuple[Path, list[Path], list[Path]]
) -> None:
    folder, good, _ = mixed_dir
    config = config_for(tmp_path, storescp.profile_toml("scp"))
    report = tmp_path / "report.json"
    result = medimg("stow", "scp", str(folder), "--report", str(report), config=config)
    assert result.code == 6, result.stderr
    doc = json.loads(report.read_text())
    assert (doc["operation"], doc["profile"], doc["exit_code"]) == ("stow", "scp", 6)
    assert (doc["done"], doc["failed"], doc["skipped"], doc["warnings"]) == (5, 2, 1, 0)
    sizes = sum(len(dataset_bytes(p)) for p in good)
    assert doc["bytes"] == sizes
    items = {Path(i["name"]).name: i for i in doc["items"]}
    assert len(items) == 8
    assert items["truncated.dcm"]["status"] == "failed"
    assert "truncated" in items["truncated.dcm"]["message"]
    assert items["notes.txt"]["skipped"] == 1
    assert all(items[p.name]["done"] == 1 and items[p.name]["bytes"] > 0 for p in good)


def test_peer_that_aborts_mid_transfer_is_exit_4(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    scp = fresh_peers.storescp(extra_args=["--abort-after"])  # A-ABORT after the first store
    config = config_for(tmp_path, scp.profile_toml("scp"))
    result = medimg("stow", "scp", *map(str, dicom_data.paths[:3]), config=config)
    assert result.code == 4, result.stderr
    assert (f"medimg: the peer aborted the association during C-STORE of "
            f"{dicom_data.paths[0]}") in result.stderr
    assert "Traceback" not in result.stderr


STORESCP_ONLY_SC = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[[PresentationContexts]]
[OnlySecondaryCapture]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = SecondaryCaptureImageStorage\\Uncompressed
[[Profiles]]
[OnlySecondaryCapture]
PresentationContexts = OnlySecondaryCapture
"""


def test_refused_sop_class_fails_every_file_with_exit_5(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    cfg = tmp_path / "storescp.cfg"
    cfg.write_text(STORESCP_ONLY_SC)
    scp = fresh_peers.storescp(extra_args=["-xf", str(cfg), "OnlySecondaryCapture"])
    config = config_for(tmp_path, scp.profile_toml("scp"))
    sent = dicom_data.paths[:6]
    result = medimg("stow", "scp", *map(str, sent), config=config)
    assert result.code == 5, result.stderr
    assert scp.received_files() == []
    lines = result.jsonl()
    assert [line["status"] for line in lines] == ["failed"] * len(sent)
    assert all("the peer refused" in line["message"] for line in lines)
    assert "the peer refused CT Image Storage (abstract syntax not supported)" in result.stderr
    assert "stow: nothing succeeded (6 failed)" in result.stderr


def test_refused_transfer_syntax_is_converted(
    tmp_path: Path, fresh_peers: PeerPool, dicom_data: Manifest
) -> None:
    from pydicom import dcmread

    scp = fresh_peers.storescp(extra_args=["+xi", "+B"])  # Implicit VR Little Endian only
    config = config_for(tmp_path, scp.profile_toml("scp"))
    sent = dicom_data.paths[:4]
    assert {read_file_meta(p).transfer_syntax for p in sent} == {EXPLICIT_LE}
    result = medimg("stow", "scp", *map(str, sent), config=config)
    assert result.code == 0, result.stderr
    assert all("sent as Implicit VR Little Endian" in line["message"] for line in result.jsonl())
    received = by_uid(scp.received_files())
    for uid, source_path in by_uid(sent).items():
        assert read_file_meta(received[uid]).transfer_syntax == IMPLICIT_LE
        got, source = dcmread(received[uid]), dcmread(source_path)
        assert [e.tag for e in got] == [e.tag for e in source]
        for element in source:
            assert got[element.tag].value == element.value, element.keyword


def test_compressed_file_whose_syntax_is_refused_fails_with_the_reason(
    tmp_path: Path, storescp: Storescp, dicom_data: Manifest
) -> None:
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds = dcmread(dicom_data.paths[0])
    ds.file_meta.TransferSyntaxUID = UID(JPEG_BASELINE)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 30 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    jpeg = tmp_path / "jpeg.dcm"
    ds.save_as(jpeg, enforce_file_format=True)
    good = copy_files(dicom_data.paths[1:2], tmp_path / "good")
    config = config_for(tmp_path, storescp.profile_toml("scp"))

    result = medimg("stow", "scp", str(jpeg), *map(str, good), config=config)
    assert result.code == 6, result.stderr
    assert (f"failed: {jpeg}: the peer refused JPEG Baseline (Process 1) for CT Image Storage "
            "and accepts only Explicit VR Little Endian; medimg does not decompress"
            ) in result.stderr
    assert len(storescp.received_files()) == 1


# --------------------------------------------------------------------------
# A storage SCP the test controls


@dataclass
class RecordingScp:
    port: int
    status: int = 0x0000
    delay: float = 0.0
    stored: Counter[str] = field(default_factory=Counter)
    associations: dict[int, Any] = field(default_factory=dict)  # id -> (kept alive) association
    aborted: int = 0  # A-ABORTs received
    lock: threading.Lock = field(default_factory=threading.Lock)

    def profile(self) -> str:
        return (f'[profiles.ctl]\ntype = "dimse"\nhost = "127.0.0.1"\nport = {self.port}\n'
                'called_aet = "RECORDER"\n')

    def target(self) -> Target:
        return Target("127.0.0.1", self.port, "RECORDER", timeout=20, profile="ctl")


@pytest.fixture
def recorder() -> Iterator[RecordingScp]:
    from pynetdicom import AE, evt
    from pynetdicom.pdu_primitives import A_ABORT

    state = RecordingScp(port=free_port())

    def on_store(event: Any) -> int:
        if state.delay:
            time.sleep(state.delay)
        with state.lock:
            state.stored[str(event.request.AffectedSOPInstanceUID)] += 1
            state.associations[id(event.assoc)] = event.assoc
        return state.status

    def on_acse(event: Any) -> None:
        # A-ABORT from the peer, not A-P-ABORT (the connection just closed)
        if type(event.primitive) is A_ABORT:
            with state.lock:
                state.aborted += 1

    ae = AE(ae_title="RECORDER")
    ae.add_supported_context(VERIFICATION)
    for sop in (CT, MR):
        ae.add_supported_context(sop, [EXPLICIT_LE, IMPLICIT_LE])
    server = ae.start_server(("127.0.0.1", state.port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, on_store), (evt.EVT_ACSE_RECV, on_acse)])
    yield state
    server.shutdown()


def test_failure_status_fails_every_file_with_its_meaning(
    tmp_path: Path, recorder: RecordingScp, dicom_data: Manifest
) -> None:
    recorder.status = 0xA700
    sent = dicom_data.paths[:3]
    result = medimg("stow", "ctl", *map(str, sent), config=config_for(tmp_path, recorder.profile()))
    assert result.code == 5, result.stderr
    assert [(line["status"], line["code"]) for line in result.jsonl()] == [("failed", 0xA700)] * 3
    assert f"failed: {sent[0]}: 0xA700 Failure: Refused: Out of Resources" in result.stderr
    assert "medimg: stow: nothing succeeded (3 failed)" in result.stderr


def test_warning_status_counts_as_warning(
    tmp_path: Path, recorder: RecordingScp, dicom_data: Manifest
) -> None:
    recorder.status = 0xB000
    result = medimg("stow", "ctl", str(dicom_data.paths[0]),
                    config=config_for(tmp_path, recorder.profile()))
    assert result.code == 0, result.stderr
    (line,) = result.jsonl()
    assert (line["status"], line["code"]) == ("warning", 0xB000)
    assert "Coercion of Data Elements" in line["message"]
    assert "stow: 0 done, 1 warnings, 0 failed" in result.stderr


def test_parallel_stores_every_file_exactly_once(
    recorder: RecordingScp, dicom_data: Manifest
) -> None:
    results: list[FileResult] = []
    summary = stow(recorder.target(), [dicom_data.root], parallel=2, on_result=results.append)
    assert summary.exit_code == 0
    assert summary.done == len(dicom_data.paths)
    assert sorted(r.path for r in results) == sorted(map(str, dicom_data.paths))
    assert recorder.stored == Counter({i.sop_instance_uid: 1 for i in dicom_data.instances})
    assert len(recorder.associations) == 2


def test_more_contexts_than_fit_take_several_associations(
    recorder: RecordingScp, dicom_data: Manifest
) -> None:
    # CT and MR need two contexts each; with room for three (Verification
    # included), each SOP class gets its own association.
    summary = stow(recorder.target(), dicom_data.paths, max_contexts=3)
    assert summary.done == len(dicom_data.paths) and summary.failed == 0
    assert sum(recorder.stored.values()) == len(dicom_data.paths)
    assert len(recorder.associations) == 2


@pytest.mark.parametrize("parallel", [1, 2])
def test_ctrl_c_aborts_the_associations_and_stops_the_workers(
    tmp_path: Path, recorder: RecordingScp, dicom_data: Manifest, parallel: int
) -> None:
    recorder.delay = 0.2
    config = config_for(tmp_path, recorder.profile())
    proc = subprocess.Popen(
        [*MEDIMG, "--config", str(config), "stow", "ctl", str(dicom_data.root),
         "--parallel", str(parallel)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while len(recorder.associations) < parallel or sum(recorder.stored.values()) < 4:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the stores never started"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)  # to medimg alone: it must stop its workers itself
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "medimg: interrupted" in err
    time.sleep(1)
    with recorder.lock:
        stored, aborted = sum(recorder.stored.values()), recorder.aborted
    assert aborted == parallel
    time.sleep(1)
    assert sum(recorder.stored.values()) == stored < len(dicom_data.paths)


def test_piped_stdout_holds_only_result_lines(
    tmp_path: Path, recorder: RecordingScp, dicom_data: Manifest
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    result = medimg("stow", "ctl", str(dicom_data.paths[0]), str(notes),
                    config=config_for(tmp_path, recorder.profile()))
    assert result.code == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"path": str(notes), "sop_instance_uid": "", "status": "skipped", "code": None,
         "message": "not a DICOM file (no 'DICM' at byte 128)"},
        {"path": str(dicom_data.paths[0]), "sop_instance_uid":
         dicom_data.instances[0].sop_instance_uid, "status": "stored", "code": 0, "message": ""},
    ]


def test_missing_path_and_wrong_profile_type_are_usage_errors(
    tmp_path: Path, recorder: RecordingScp
) -> None:
    config = config_for(tmp_path, recorder.profile()
                        + '[profiles.ehr]\ntype = "fhir"\nurl = "http://127.0.0.1:1/"\n')
    missing = medimg("stow", "ctl", str(tmp_path / "nope"), config=config)
    assert missing.code == 2
    assert f"no such file or directory: '{tmp_path / 'nope'}'" in missing.stderr
    ehr = medimg("stow", "ehr", str(tmp_path), config=config)
    assert ehr.code == 2 and "a fhir profile" in ehr.stderr
    assert recorder.stored == Counter()


# --------------------------------------------------------------------------
# Pure logic: file meta, structure check, context plan


def test_file_meta_is_read_without_the_data_set(dicom_data: Manifest) -> None:
    instance = dicom_data.instances[0]
    meta = read_file_meta(instance.path)
    assert (meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax) == (
        instance.sop_class_uid, instance.sop_instance_uid, EXPLICIT_LE)
    data = instance.path.read_bytes()
    assert data[meta.offset : meta.offset + 2] == b"\x08\x00"  # first data set group


def test_files_without_dicm_are_not_dicom_and_broken_meta_is_corrupt(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text("x" * 500)
    with pytest.raises(NotDicomError):
        read_file_meta(text)
    broken = tmp_path / "b.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00" + b"1.2")
    with pytest.raises(CorruptFileError, match="truncated"):
        read_file_meta(broken)


def _with_sequence(implicit: bool) -> tuple[bytes, set[int]]:
    """A data set with nested undefined-length sequences, and its top-level boundaries."""
    from pydicom import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element
    from pydicom.sequence import Sequence

    inner = Dataset()
    inner.CodeValue = "123"
    inner.CodeMeaning = "Something"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.ConceptNameCodeSequence = Sequence([inner])
    item.is_undefined_length_sequence_item = True
    ds = Dataset()
    ds.PatientName = "DOE^JOHN"
    ds.ReferencedImageSequence = Sequence([item, inner])  # one undefined-length item
    ds["ReferencedImageSequence"].is_undefined_length = True
    item["ConceptNameCodeSequence"].is_undefined_length = True
    ds.PatientID = "P1"
    ds.PixelData = b"\x01\x02" * 20
    ds["PixelData"].VR = "OW"
    out, boundaries = b"", {0}
    for element in ds:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_data_element(fp, element)
        out += fp.getvalue()
        boundaries.add(len(out))
    return out, boundaries


@pytest.mark.parametrize("implicit", [False, True])
def test_structure_check_finds_every_cut_inside_an_element(implicit: bool) -> None:
    data, boundaries = _with_sequence(implicit)
    check_structure(data, 0, implicit, True)
    for cut in range(1, len(data)):
        if cut in boundaries:
            check_structure(data[:cut], 0, implicit, True)  # a shorter, valid data set
        else:
            with pytest.raises(CorruptFileError):
                check_structure(data[:cut], 0, implicit, True)


def test_structure_check_rejects_garbage_and_allows_zero_padding() -> None:
    data, _ = _with_sequence(False)
    check_structure(data + b"\0" * 10, 0, False, True)
    with pytest.raises(CorruptFileError):
        check_structure(data + bytes(range(40, 90)), 0, False, True)


def _meta(i: int, sop: str, ts: str) -> DicomFile:
    return DicomFile(Path(f"{i}.dcm"), sop, f"1.2.3.{i}", ts, 200, 1000)


def test_plan_fits_128_contexts_per_association_with_fallbacks() -> None:
    files = [_meta(i, f"1.2.840.10008.5.1.4.1.1.{i % 149}", ts)
             for i, ts in enumerate([EXPLICIT_LE, JPEG_BASELINE] * 200)]
    plans = plan_associations(files)
    assert len(plans) > 1
    assert sum(len(p.files) for p in plans) == len(files)
    for plan in plans:
        assert len(plan.contexts) <= 128
        assert plan.contexts[0] == (VERIFICATION, (IMPLICIT_LE,))
        proposed = set(plan.contexts)
        for f in plan.files:
            assert (f.sop_class_uid, (f.transfer_syntax,)) in proposed
            fallback = [ts for abstract, tss in proposed if abstract == f.sop_class_uid
                        for ts in tss]
            assert EXPLICIT_LE in fallback and IMPLICIT_LE in fallback
    # a SOP class is never split from its fallback across associations
    for plan in plans:
        sops = {abstract for abstract, _ in plan.contexts}
        assert not any(sops & {a for a, _ in other.contexts} - {VERIFICATION}
                       for other in plans if other is not plan)


def test_plan_proposes_only_the_missing_little_endian_fallback() -> None:
    (plan,) = plan_associations([_meta(1, CT, EXPLICIT_LE), _meta(2, MR, JPEG_BASELINE),
                                 _meta(3, CT, IMPLICIT_LE)])
    assert plan.contexts == [
        (VERIFICATION, (IMPLICIT_LE,)),
        (CT, (EXPLICIT_LE,)), (CT, (IMPLICIT_LE,)),
        (MR, (JPEG_BASELINE,)), (MR, (EXPLICIT_LE, IMPLICIT_LE)),
    ]


def test_importing_the_stow_command_loads_no_protocol_library() -> None:
    code = ("import sys, medimg_cli.cli.stow\n"
            "print([m for m in ('pynetdicom', 'pydicom') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
