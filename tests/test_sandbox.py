"""`medimg sandbox`, DIMSE side: a usable peer for DCMTK's tools, PS3.4 matching,
bad input answered with the standard failure statuses while it keeps serving,
data that survives a restart, the demo set, and `--write-profiles`.

The session sandbox (conftest's ``sandbox``) holds ``dicom_data``; tests that
store or need other settings start their own with ``fresh_sandbox``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from cli_helpers import medimg, value, write_config
from dicom_data import Manifest, generate
from peers import LOOPBACK, free_port, run_dcmtk
from pydicom.dataset import Dataset
from sandbox_peer import Sandbox

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture
def fresh_sandbox(tmp_path: Path) -> Iterator[Callable[..., Sandbox]]:
    """Start sandboxes that are stopped (SIGKILL) after the test."""
    started: list[Sandbox] = []

    def start(**kwargs: Any) -> Sandbox:
        peer = Sandbox.start(tmp_path / f"sandbox-{len(started)}", **kwargs)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop(graceful=False)


def associate(peer: Sandbox, *contexts: str, called: str | None = None) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title="PYTEST")
    for uid in contexts:
        ae.add_requested_context(uid)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    return ae.associate(LOOPBACK, peer.port, ae_title=called or peer.aet)


def c_find(peer: Sandbox, keys: dict[str, Any], model: str = STUDY_ROOT_FIND
           ) -> tuple[list[Dataset], int]:
    """C-FIND with pynetdicom: (matches, final status)."""
    ds = Dataset()
    for keyword, val in keys.items():
        setattr(ds, keyword, val)
    assoc = associate(peer, model)
    assert assoc.is_established
    matches: list[Dataset] = []
    final = -1
    try:
        for status, identifier in assoc.send_c_find(ds, model):
            if status is None:
                break
            if status.Status in (0xFF00, 0xFF01):
                matches.append(identifier)
            else:
                final = int(status.Status)
    finally:
        assoc.release()
    return matches, final


def echo_ok(peer: Sandbox) -> bool:
    result = run_dcmtk(["echoscu", "-to", "5", "-aec", peer.aet, LOOPBACK, str(peer.port)])
    return result.returncode == 0


def uids(matches: list[Dataset], keyword: str = "StudyInstanceUID") -> set[str]:
    return {str(getattr(m, keyword)) for m in matches}


# --------------------------------------------------------------------------
# DCMTK's tools against the sandbox


def test_dcmtk_echoscu_and_findscu_both_roots(sandbox: Sandbox, dicom_data: Manifest,
                                              tmp_path: Path) -> None:
    assert echo_ok(sandbox)
    out = tmp_path / "p"
    out.mkdir()
    result = run_dcmtk(["findscu", "-P", "-X", "-od", str(out), "-aec", sandbox.aet,
                        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT001",
                        "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances",
                        LOOPBACK, str(sandbox.port)])
    assert result.returncode == 0, result.stderr
    answers = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    assert uids(answers) == {s.study_uid for s in dicom_data.studies_of("PAT001")}
    for a in answers:
        assert int(a.NumberOfStudyRelatedInstances) == len(
            dicom_data.instances_of_study(str(a.StudyInstanceUID)))


def test_dcmtk_movescu_with_its_own_storage_port(fresh_sandbox: Callable[..., Sandbox],
                                                 dicom_data: Manifest, tmp_path: Path) -> None:
    port = free_port()
    study = dicom_data.studies[4]
    peer = fresh_sandbox(preload=[i.path for i in dicom_data.instances_of_study(study.study_uid)],
                         modalities={"MOVESCU": ("MOVESCU", LOOPBACK, port)})
    out = tmp_path / "moved"
    out.mkdir()
    result = run_dcmtk(["movescu", "-S", "-aet", "MOVESCU", "-aem", "MOVESCU", "-aec", peer.aet,
                        "+P", str(port), "-od", str(out),
                        "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={study.study_uid}",
                        LOOPBACK, str(peer.port)], timeout=60)
    assert result.returncode == 0, result.stderr
    got = {str(pydicom.dcmread(p).SOPInstanceUID) for p in out.iterdir()}
    assert got == {i.sop_instance_uid for i in dicom_data.instances_of_study(study.study_uid)}


def test_dcmtk_getscu_and_storescu(fresh_sandbox: Callable[..., Sandbox],
                                   dicom_data: Manifest, tmp_path: Path) -> None:
    peer = fresh_sandbox()
    series = dicom_data.series[0]
    files = [str(i.path) for i in dicom_data.instances_of_series(series.series_uid)]
    stored = run_dcmtk(["storescu", "-aec", peer.aet, LOOPBACK, str(peer.port), *files])
    assert stored.returncode == 0 and "Store Failed" not in stored.stderr, stored.stderr
    out = tmp_path / "got"
    out.mkdir()
    result = run_dcmtk(["getscu", "-S", "-aec", peer.aet, "-od", str(out),
                        "-k", "QueryRetrieveLevel=SERIES",
                        "-k", f"StudyInstanceUID={series.study_uid}",
                        "-k", f"SeriesInstanceUID={series.series_uid}",
                        LOOPBACK, str(peer.port)], timeout=60)
    assert result.returncode == 0, result.stderr
    got = sorted(out.iterdir())
    assert {str(pydicom.dcmread(p).SOPInstanceUID) for p in got} == {
        i.sop_instance_uid for i in dicom_data.instances_of_series(series.series_uid)}
    # what came back is what went in, byte for byte after the file meta
    for path in got:
        ds = pydicom.dcmread(path)
        source = next(i.path for i in dicom_data.instances
                      if i.sop_instance_uid == str(ds.SOPInstanceUID))
        assert _dataset_bytes(path) == _dataset_bytes(source)


def _dataset_bytes(path: Path) -> bytes:
    from medimg_cli.dimse.store import read_file_meta

    return path.read_bytes()[read_file_meta(path).offset :]


# --------------------------------------------------------------------------
# PS3.4 C.2.2.2 matching


def test_wildcard_range_list_and_universal_matching(sandbox: Sandbox,
                                                     dicom_data: Manifest) -> None:
    def studies(**keys: Any) -> set[str]:
        matches, final = c_find(sandbox, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "",
                                          **keys})
        assert final == 0
        return uids(matches)

    def of(*patients: str) -> set[str]:
        return {s.study_uid for s in dicom_data.studies if s.patient_id in patients}

    everything = {s.study_uid for s in dicom_data.studies}
    assert studies() == everything  # universal: no key restricts
    assert studies(PatientName="*") == everything
    assert studies(PatientName="DOE^J?HN") == of("PAT001")
    assert studies(PatientName="doe*") == of("PAT001", "PAT002")  # PN ignores case (as Orthanc)
    assert studies(PatientID="PAT001\\PAT003") == of("PAT001", "PAT003")  # list matching
    uid_list = [s.study_uid for s in dicom_data.studies[:3]]
    assert studies(StudyInstanceUID="\\".join(uid_list)) == set(uid_list)
    assert studies(StudyDate="20240131-20240301") == {
        s.study_uid for s in dicom_data.studies if "20240131" <= s.study_date <= "20240301"}
    assert studies(StudyDate="20241231-") == {
        s.study_uid for s in dicom_data.studies if s.study_date >= "20241231"}
    assert studies(StudyTime="-000000") == {
        s.study_uid for s in dicom_data.studies if s.study_time == "000000"}
    assert studies(ModalitiesInStudy="MR") == {
        s.study_uid for s in dicom_data.studies if "MR" in s.modalities}
    assert studies(AccessionNumber="NOPE") == set()
    # an attribute the record lacks matches only universally
    assert studies(ReferringPhysicianName="?*") == {
        s.study_uid for s in dicom_data.studies if s.referring_physician}


def test_all_levels_and_both_roots(sandbox: Sandbox, dicom_data: Manifest) -> None:
    patients, final = c_find(sandbox, {"QueryRetrieveLevel": "PATIENT", "PatientID": "",
                                       "PatientName": "", "NumberOfPatientRelatedStudies": ""},
                             PATIENT_ROOT_FIND)
    assert final == 0
    assert {str(p.PatientName) for p in patients} == {p.name for p in dicom_data.patients}
    for p in patients:
        assert int(p.NumberOfPatientRelatedStudies) == len(dicom_data.studies_of(p.PatientID))
    series = dicom_data.series[0]
    instances, final = c_find(sandbox, {"QueryRetrieveLevel": "IMAGE",
                                        "StudyInstanceUID": series.study_uid,
                                        "SeriesInstanceUID": series.series_uid,
                                        "SOPInstanceUID": "", "InstanceNumber": ""})
    assert final == 0
    assert uids(instances, "SOPInstanceUID") == {
        i.sop_instance_uid for i in dicom_data.instances_of_series(series.series_uid)}
    # PATIENT level does not exist in Study Root
    none, final = c_find(sandbox, {"QueryRetrieveLevel": "PATIENT", "PatientID": ""})
    assert none == [] and final == 0xA900


# --------------------------------------------------------------------------
# Bad input: the standard failure status, and the sandbox keeps serving


def test_malformed_identifier_fails_and_the_sandbox_keeps_serving(sandbox: Sandbox) -> None:
    from pynetdicom.dimse_primitives import C_FIND

    assoc = associate(sandbox, STUDY_ROOT_FIND)
    assert assoc.is_established
    try:
        context = assoc.accepted_contexts[0]
        request = C_FIND()
        request.MessageID = 7
        request.AffectedSOPClassUID = STUDY_ROOT_FIND
        request.Priority = 2
        # (0008,0052) claiming 0x7FFFFFFF bytes: no data set decodes from this
        request.Identifier = BytesIO(b"\x08\x00\x52\x00\xff\xff\xff\x7fSTUDY")
        assoc._reactor_checkpoint.clear()  # as send_c_find does: the reply is ours
        while not assoc._is_paused:
            time.sleep(0.001)
        try:
            assoc.dimse.send_msg(request, context.context_id)
            _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        assert response is not None
        assert 0xC000 <= response.Status <= 0xCFFF or response.Status == 0xA900
    finally:
        assoc.release()
    # no QueryRetrieveLevel, and a level that does not exist
    for keys in ({"PatientID": ""}, {"QueryRetrieveLevel": "IMAGES", "PatientID": ""}):
        matches, final = c_find(sandbox, keys)
        assert matches == [] and final == 0xA900
    assert echo_ok(sandbox)


def test_unknown_move_destination_is_a801_and_the_sandbox_keeps_serving(
    sandbox: Sandbox, dicom_data: Manifest
) -> None:
    assoc = associate(sandbox, STUDY_ROOT_MOVE)
    assert assoc.is_established
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = dicom_data.studies[0].study_uid
    try:
        statuses = [int(status.Status) for status, _ in
                    assoc.send_c_move(ds, "NOBODY", STUDY_ROOT_MOVE) if status]
    finally:
        assoc.release()
    assert statuses == [0xA801]
    assert echo_ok(sandbox)


def test_wrong_called_aet_is_rejected(sandbox: Sandbox) -> None:
    assoc = associate(sandbox, VERIFICATION, called="WRONG")
    assert assoc.is_rejected
    assert echo_ok(sandbox)


# --------------------------------------------------------------------------
# Storage and the index


def test_c_store_then_restart_keeps_everything(fresh_sandbox: Callable[..., Sandbox],
                                               tmp_path: Path) -> None:
    other = generate(tmp_path / "other", seed=77)
    peer = fresh_sandbox()
    study = other.studies[0]
    paths = [i.path for i in other.instances_of_study(study.study_uid)]
    config = write_config(tmp_path / "c.toml", peer.profile_toml("sb"))
    stowed = medimg("stow", "sb", *map(str, paths), config=config)
    assert stowed.code == 0, stowed.stderr
    stored_files = sorted((peer.data_dir / "files").rglob("*.dcm"))
    assert len(stored_files) == len(paths)
    # the file meta is ours, the data set exactly what was sent
    sources = {_dataset_bytes(p) for p in paths}
    assert {_dataset_bytes(p) for p in stored_files} == sources

    peer.restart()
    found = medimg("find", "sb", "--level", "instance", "--study-uid", study.study_uid,
                   "--format", "uids", config=config)
    assert found.code == 0, found.stderr
    assert sorted(found.stdout.split()) == sorted(
        f"{i.study_uid}/{i.series_uid}/{i.sop_instance_uid}"
        for i in other.instances_of_study(study.study_uid))
    assert "indexed" not in peer.log_tail(200).split("stopping")[-1]  # nothing re-imported


def test_new_data_folder_gets_the_demo_studies(fresh_sandbox: Callable[..., Sandbox],
                                               tmp_path: Path) -> None:
    from medimg_cli.sandbox.demo import PATIENTS, STUDIES

    peer = fresh_sandbox(demo=True)
    config = write_config(tmp_path / "c.toml", peer.profile_toml("sb"))
    found = medimg("find", "sb", config=config)
    assert found.code == 0, found.stderr
    records = found.jsonl()
    assert len(records) == len(STUDIES)
    names = {value(r, "00100010") for r in records}
    assert {"Müller^Jürgen", "山田^太郎"} <= names
    assert names == {p.name for p in PATIENTS}
    assert "new data folder: stored" in peer.log_tail()


def test_demo_files_are_deterministic() -> None:
    from medimg_cli.sandbox.demo import demo_files

    first, second = demo_files(), demo_files()
    assert first == second and len(first) > 20
    charsets = {pydicom.dcmread(BytesIO(data)).SpecificCharacterSet for data in first}
    assert charsets == {"ISO_IR 192"}


def test_many_studies_are_found_in_one_c_find(fresh_sandbox: Callable[..., Sandbox],
                                              tmp_path: Path) -> None:
    from dicom_data import generate_many_studies

    many = generate_many_studies(tmp_path / "many", 600)
    peer = fresh_sandbox(preload=many.paths)
    matches, final = c_find(peer, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "",
                                   "PatientName": ""})
    assert final == 0
    assert uids(matches) == {s.study_uid for s in many.studies}


# --------------------------------------------------------------------------
# The command line


def test_write_profiles_adds_three_and_leaves_the_rest(tmp_path: Path) -> None:
    from medimg_cli.cli.sandbox_cmd import write_profiles
    from medimg_cli.config import load_config

    config = tmp_path / "config.toml"
    original = ('# my settings\n[defaults]\ncalling_aet = "ME"\n\n'
                '[profiles.main]\ntype = "dimse"\nhost = "pacs"\ncalled_aet = "PACS"\n\n'
                '[profiles.sandbox]\ntype = "dimse"\nhost = "old"\ncalled_aet = "OLD"\n\n'
                '[profiles.zz]\ntype = "dicomweb"\nurl = "https://x/dicom-web"\n')
    config.write_text(original)
    write_profiles(config, "127.0.0.1", 4242, 4280, "SANDBOX")
    write_profiles(config, "127.0.0.1", 4242, 4280, "SANDBOX")  # idempotent
    text = config.read_text()
    assert text.startswith("# my settings\n[defaults]\ncalling_aet = \"ME\"")
    assert '[profiles.main]\ntype = "dimse"\nhost = "pacs"\ncalled_aet = "PACS"' in text
    assert "OLD" not in text and text.count("[profiles.sandbox]") == 1
    loaded = load_config(config)
    assert loaded.profile("sandbox").port == 4242
    assert loaded.profile("sandbox-web").endpoint == "http://127.0.0.1:4280/dicom-web"
    assert loaded.profile("sandbox-fhir").endpoint == "http://127.0.0.1:4280/fhir"
    assert loaded.profile("zz").endpoint == "https://x/dicom-web"


def test_write_profiles_keeps_the_previous_file_when_it_replaces_a_different_profile(
    tmp_path: Path,
) -> None:
    from medimg_cli.cli.sandbox_cmd import write_profiles

    config = tmp_path / "config.toml"
    original = ('# mine\n[profiles.sandbox]\ntype = "dimse"\nhost = "10.0.0.5"\n'
                'called_aet = "REAL"\n')
    config.write_text(original)
    backup = write_profiles(config, "127.0.0.1", 4242, 4280, "SANDBOX")
    assert backup == tmp_path / "config.toml.bak" and backup.read_text() == original
    assert "REAL" not in config.read_text()
    backup.unlink()
    assert write_profiles(config, "127.0.0.1", 4242, 4280, "SANDBOX") is None  # same again
    assert not backup.exists()
    fresh = tmp_path / "new.toml"
    assert write_profiles(fresh, "127.0.0.1", 4242, 4280, "SANDBOX") is None


def test_write_profiles_into_a_folder_that_cannot_be_written_is_a_usage_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "not-a-folder").write_text("x")
    result = medimg("sandbox", "--write-profiles", "--data", str(tmp_path / "data"),
                    config=tmp_path / "not-a-folder" / "config.toml")
    assert result.code == 2 and result.stdout == ""
    assert result.stderr.startswith("medimg: --write-profiles: cannot write ")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "data").exists()  # stopped before serving anything


def test_write_profiles_from_the_command_line_then_echo_and_own_receiver(tmp_path: Path) -> None:
    dicom_port, http_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    config.write_text('[defaults]\ncalling_aet = "ME"\nreceive_port = 4321\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "medimg_cli", "--config", str(config), "sandbox",
         "--data", str(tmp_path / "data"), "--empty", "--dicom-port", str(dicom_port),
         "--http-port", str(http_port), "--write-profiles"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while medimg("echo", "sandbox", config=config).code != 0:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the sandbox did not answer"
            time.sleep(0.2)
        web = medimg("echo", "sandbox-web", config=config)
        assert web.code == 0, web.stderr
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert f"SANDBOX@127.0.0.1:{dicom_port}" in output
    assert "C-ECHO from ME@127.0.0.1" in output
    assert "C-MOVE to ME=127.0.0.1:4321" in output  # medimg's own receiver, by default
    assert "stopping" in output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--move-dest", "X=host"), "--move-dest: 'X=host' is not AET=HOST:PORT"),
        (("--aet", "A" * 17), "--aet"),
        (("--dicom-port", "5000", "--http-port", "5000"), "must differ"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: tuple[str, ...],
                                      fragment: str) -> None:
    result = medimg("sandbox", "--data", str(tmp_path / "d"), *args)
    assert result.code == 2, result.stderr
    assert fragment in result.stderr and result.stderr.count("\n") == 1


def test_a_taken_port_is_a_usage_error(sandbox: Sandbox, tmp_path: Path) -> None:
    result = medimg("sandbox", "--data", str(tmp_path / "d"), "--empty", "--dicom-port",
                    str(sandbox.port), "--http-port", str(free_port()), timeout=60)
    assert result.code == 2, result.stderr
    assert f"cannot listen for DICOM on 127.0.0.1:{sandbox.port}" in result.stderr
    assert "--dicom-port" in result.stderr


def test_help_lists_the_options() -> None:
    result = medimg("sandbox", "--help")
    assert result.code == 0
    for option in ("--data", "--dicom-port", "--http-port", "--aet", "--move-dest",
                   "--write-profiles", "--empty"):
        assert option in result.stdout


def test_c_get_converts_when_the_requestor_takes_only_implicit_vr(
    sandbox: Sandbox, dicom_data: Manifest
) -> None:
    """Files are stored in Explicit VR Little Endian; a C-GET requestor that accepts only
    Implicit VR still gets them (decoded and re-encoded, values intact)."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import build_role

    series = next(se for se in dicom_data.series if se.modality == "CT")
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        assert event.context.transfer_syntax == "1.2.840.10008.1.2"
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="PYTEST")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.3")  # Study Root Get
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2"])  # CT, implicit
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    assoc = ae.associate(LOOPBACK, sandbox.port, ae_title=sandbox.aet,
                         ext_neg=[build_role("1.2.840.10008.5.1.4.1.1.2", scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = series.series_uid
    try:
        finals = [int(s.Status) for s, _ in assoc.send_c_get(ds, "1.2.840.10008.5.1.4.1.2.2.3")
                  if s and s.Status not in (0xFF00, 0xFF01)]
    finally:
        assoc.release()
    assert finals == [0x0000]
    expected = dicom_data.instances_of_series(series.series_uid)
    assert {str(d.SOPInstanceUID) for d in received} == {i.sop_instance_uid for i in expected}
    for d in received:
        source = pydicom.dcmread(next(i.path for i in expected
                                      if i.sop_instance_uid == str(d.SOPInstanceUID)))
        assert d.PixelData == source.PixelData and d.PatientName == source.PatientName


def test_help_loads_neither_pynetdicom_nor_sqlite() -> None:
    probe = (
        "import io, contextlib, sys\nfrom medimg_cli.cli.app import run\n"
        "for argv in (['--help'], ['sandbox', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n            run(argv)\n        except SystemExit:\n            pass\n"
        "print(','.join(m for m in ('pynetdicom', 'pydicom', 'sqlite3', 'http.server',\n"
        "      'medimg_cli.sandbox.store') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == ""
