"""Fast checks that the generated data and the real peers are what the suite assumes.

The peers are queried with DCMTK's own tools here (not medimg), so a failure in
this file points at the fixtures, not at the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from dicom_data import UID_ROOT, Manifest, generate, generate_many_studies
from peers import (
    LOOPBACK,
    Dcmqrscp,
    Orthanc,
    Peer,
    PeerPool,
    dcmtk_env,
    require_binary,
    run_dcmtk,
)
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# --------------------------------------------------------------------------
# helpers


def findscu(peer: Peer, out_dir: Path, model: str, keys: list[str]) -> list[Dataset]:
    """C-FIND with DCMTK's findscu; the responses (``-X``) read back with pydicom."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["findscu", model, "-X", "-od", str(out_dir), "-aet", "MEDIMGTEST",
            "-aec", peer.aet]
    for key in keys:
        args += ["-k", key]
    result = run_dcmtk([*args, LOOPBACK, str(peer.port)])
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


# --------------------------------------------------------------------------
# generated data


def test_data_shape(dicom_data: Manifest) -> None:
    assert len(dicom_data.patients) == 6
    assert len(dicom_data.studies) == 10
    assert 10 <= len(dicom_data.series) <= 30
    assert len(dicom_data.instances) < 60
    doe = [p for p in dicom_data.patients if p.name.startswith("DOE")]
    assert len(doe) == 2
    charsets = {p.specific_character_set for p in dicom_data.patients}
    assert {"ISO_IR 100", "ISO_IR 192"} <= charsets
    assert any(s.modalities == ("CT", "MR") for s in dicom_data.studies)
    assert all(i.path.is_file() for i in dicom_data.instances)
    # every UID is unique and valid
    uids = [s.study_uid for s in dicom_data.studies] + [
        s.series_uid for s in dicom_data.series
    ] + [i.sop_instance_uid for i in dicom_data.instances]
    assert len(set(uids)) == len(uids)
    assert all(u.startswith(UID_ROOT + ".") and len(u) <= 64 for u in uids)


def test_data_files_match_manifest(dicom_data: Manifest) -> None:
    for inst in dicom_data.instances:
        ds = pydicom.dcmread(inst.path)
        study = dicom_data.study(inst.study_uid)
        patient = dicom_data.patient(inst.patient_id)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == inst.sop_instance_uid
        assert ds.SOPInstanceUID == inst.sop_instance_uid
        assert ds.SOPClassUID == inst.sop_class_uid
        assert ds.StudyInstanceUID == study.study_uid
        assert ds.SeriesInstanceUID == inst.series_uid
        assert str(ds.PatientName) == patient.name
        assert ds.StudyDescription == study.description
        assert ds.StudyDate == study.study_date
        assert len(ds.PixelData) == inst.rows * inst.columns * 2
    # the non-ASCII names are really encoded in their character set
    raw = {p.patient_id: b"" for p in dicom_data.patients}
    for inst in dicom_data.instances:
        raw[inst.patient_id] += inst.path.read_bytes()
    assert "Müller^Jürgen".encode("latin-1") in raw["PAT004"]
    assert "山田^太郎".encode() in raw["PAT005"]


def test_generation_is_deterministic(dicom_data: Manifest, tmp_path: Path) -> None:
    again = generate(tmp_path, seed=dicom_data.seed)
    assert [i.path.read_bytes() for i in again.instances] == [
        i.path.read_bytes() for i in dicom_data.instances
    ]
    other = generate(tmp_path / "other", seed=dicom_data.seed + 1)
    assert {s.study_uid for s in other.studies}.isdisjoint(
        s.study_uid for s in dicom_data.studies
    )


def test_generate_many_studies(tmp_path: Path) -> None:
    manifest = generate_many_studies(tmp_path, 25, seed=7)
    assert len(manifest.studies) == len(manifest.instances) == 25
    assert len({i.sop_instance_uid for i in manifest.instances}) == 25
    for inst in manifest.instances:
        ds = pydicom.dcmread(inst.path)
        study = manifest.study(inst.study_uid)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPInstanceUID == inst.sop_instance_uid
        assert ds.StudyInstanceUID == inst.study_uid
        assert ds.SeriesInstanceUID == inst.series_uid
        assert ds.PatientID == inst.patient_id
        assert str(ds.PatientName) == manifest.patient(inst.patient_id).name
        assert (ds.StudyDate, ds.StudyTime) == (study.study_date, study.study_time)
        assert ds.AccessionNumber == study.accession_number
        assert ds.Rows == ds.Columns == 8


# --------------------------------------------------------------------------
# peers


def test_orthanc_holds_the_manifest(orthanc: Orthanc, dicom_data: Manifest) -> None:
    stats = orthanc.statistics()
    assert stats["CountInstances"] == len(dicom_data.instances)
    assert stats["CountSeries"] == len(dicom_data.series)
    assert stats["CountStudies"] == len(dicom_data.studies)
    assert stats["CountPatients"] == len(dicom_data.patients)


def test_dcmqrscp_holds_the_manifest(dcmqrscp: Dcmqrscp, dicom_data: Manifest) -> None:
    assert len(dcmqrscp.stored_files()) == len(dicom_data.instances)


def test_findscu_finds_every_study(pacs: Peer, dicom_data: Manifest, tmp_path: Path) -> None:
    answers = findscu(
        pacs, tmp_path, "-S",
        ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "StudyDate", "AccessionNumber"],
    )
    assert len(answers) == len(dicom_data.studies)
    got = {(a.StudyInstanceUID, a.StudyDate, a.AccessionNumber) for a in answers}
    assert got == {
        (s.study_uid, s.study_date, s.accession_number) for s in dicom_data.studies
    }


def test_findscu_patient_wildcard(pacs: Peer, dicom_data: Manifest, tmp_path: Path) -> None:
    answers = findscu(
        pacs, tmp_path, "-P", ["QueryRetrieveLevel=PATIENT", "PatientName=DOE*", "PatientID"]
    )
    expected = {p.patient_id for p in dicom_data.patients if p.name.startswith("DOE")}
    assert {a.PatientID for a in answers} == expected
    assert len(answers) == 2


def test_findscu_non_ascii_names(pacs: Peer, dicom_data: Manifest, tmp_path: Path) -> None:
    """Asking in UTF-8, every name comes back intact from both peers."""
    answers = findscu(
        pacs, tmp_path, "-P",
        ["QueryRetrieveLevel=PATIENT", "SpecificCharacterSet=ISO_IR 192", "PatientName",
         "PatientID"],
    )
    got = {a.PatientID: str(a.PatientName) for a in answers}
    assert got == {p.patient_id: p.name for p in dicom_data.patients}


def test_dcmqrscp_rejects_unknown_called_aet(dcmqrscp: Dcmqrscp) -> None:
    assert dcmqrscp.echo().returncode == 0
    wrong = dcmqrscp.echo("WRONG")
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr


def test_orthanc_called_aet_check(orthanc: Orthanc, orthanc_checking_aet: Orthanc) -> None:
    def echo(peer: Orthanc, aet: str) -> subprocess.CompletedProcess[str]:
        return run_dcmtk(["echoscu", "-to", "5", "-aec", aet, LOOPBACK, str(peer.port)])

    assert echo(orthanc, "WRONG").returncode == 0  # default: not checked
    assert echo(orthanc_checking_aet, "ORTHANC").returncode == 0
    wrong = echo(orthanc_checking_aet, "WRONG")
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr


@pytest.mark.parametrize("patient_id", ["PAT004", "PAT005"])
def test_orthanc_rest_unicode_names(
    orthanc: Orthanc, dicom_data: Manifest, patient_id: str
) -> None:
    found = orthanc.rest(
        "POST", "/tools/find",
        {"Level": "Patient", "Query": {"PatientID": patient_id}, "Expand": True},
    )
    assert len(found) == 1
    orthanc_id = found[0]["ID"]
    patient = orthanc.get(f"/patients/{orthanc_id}")
    assert patient["MainDicomTags"]["PatientName"] == dicom_data.patient(patient_id).name


def test_orthanc_dicomweb_qido(orthanc: Orthanc, dicom_data: Manifest) -> None:
    req = urllib.request.Request(
        f"{orthanc.dicomweb_url}/studies", headers={"Accept": "application/dicom+json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as resp:
        studies = json.loads(resp.read())
    assert {s["0020000D"]["Value"][0] for s in studies} == {
        s.study_uid for s in dicom_data.studies
    }


def test_move_destination_medimg_is_known(
    pacs: Peer, dicom_data: Manifest, medimg_receive_port: int, tmp_path: Path
) -> None:
    """Both peers C-MOVE to AE MEDIMG at ``medimg_receive_port`` (here: DCMTK storescp)."""
    study = dicom_data.studies[0]
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen(
        [require_binary("storescp"), "-aet", "MEDIMG", "-od", str(received),
         str(medimg_receive_port)],
        env=dcmtk_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while run_dcmtk(["echoscu", "-aec", "MEDIMG", LOOPBACK,
                         str(medimg_receive_port)]).returncode != 0:
            assert scp.poll() is None, "storescp exited"
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.05)
        result = run_dcmtk(
            ["movescu", "-S", "-aet", "MEDIMGTEST", "-aem", "MEDIMG", "-aec", pacs.aet,
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}",
             LOOPBACK, str(pacs.port)]
        )
        assert result.returncode == 0, result.stderr
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    got = {pydicom.dcmread(p).SOPInstanceUID for p in received.iterdir()}
    assert got == {i.sop_instance_uid for i in dicom_data.instances_of_study(study.study_uid)}


def test_profile_toml(pacs: Peer) -> None:
    doc = tomllib.loads(pacs.profile_toml("test-pacs", calling_aet="MEDIMG", timeout=5))
    assert doc == {
        "profiles": {
            "test-pacs": {
                "type": "dimse", "host": LOOPBACK, "port": pacs.port,
                "called_aet": pacs.aet, "calling_aet": "MEDIMG", "timeout": 5,
            }
        }
    }
    dropped = tomllib.loads(pacs.profile_toml("p", called_aet=None))
    assert "called_aet" not in dropped["profiles"]["p"]


def test_require_binary_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="dcmtk"):
        require_binary("echoscu")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="dcmtk"):
        require_binary("echoscu")


def test_fresh_peers(fresh_peers: PeerPool, dicom_data: Manifest, tmp_path: Path) -> None:
    study = dicom_data.studies[1]
    files = [i.path for i in dicom_data.instances_of_study(study.study_uid)]
    qr = fresh_peers.dcmqrscp(load=files)
    answers = findscu(qr, tmp_path, "-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"])
    assert [a.StudyInstanceUID for a in answers] == [study.study_uid]
    web = fresh_peers.orthanc(load=files)
    assert web.statistics()["CountInstances"] == len(files)
    web.clear()
    assert web.statistics()["CountInstances"] == 0
