"""`medimg move` and `medimg get` against Orthanc and dcmqrscp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Result, medimg, write_config
from dicom_data import Instance, Manifest
from peers import Peer

from medimg_cli.storage import PART_SUFFIX


@pytest.fixture
def config(tmp_path: Path, pacs: Peer, medimg_receive_port: int) -> Path:
    return write_config(
        tmp_path / "c.toml", pacs.profile_toml("pacs"),
        defaults=f'calling_aet = "MEDIMG"\nreceive_port = {medimg_receive_port}\n',
    )


def dataset_part(path: Path) -> bytes:
    """The bytes after the file meta group: the dataset as stored."""
    import struct

    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    (meta_len,) = struct.unpack_from("<I", data, 132 + 8)
    return data[132 + 12 + meta_len :]


def expected_path(out: Path, inst: Instance) -> Path:
    return out / inst.patient_id / inst.study_uid / inst.series_uid / f"{inst.sop_instance_uid}.dcm"


def assert_retrieved(out: Path, instances: list[Instance]) -> None:
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert sorted(expected_path(out, i) for i in instances) == files
    for inst in instances:
        got = expected_path(out, inst)
        assert dataset_part(got) == dataset_part(inst.path), f"{got} differs from the source"
    assert not list(out.rglob(f"*{PART_SUFFIX}"))


def retrieve(kind: str, config: Path, out: Path, *args: str) -> Result:
    result = medimg(kind, "pacs", "--out", str(out), *args, config=config)
    assert result.code == 0, result.stderr
    return result


@pytest.mark.parametrize("kind", ["move", "get"])
def test_retrieve_study_series_and_instance(
    kind: str, config: Path, tmp_path: Path, dicom_data: Manifest
) -> None:
    study = max(dicom_data.studies, key=lambda s: len(dicom_data.instances_of_study(s.study_uid)))
    result = retrieve(kind, config, tmp_path / "study", study.study_uid)
    instances = dicom_data.instances_of_study(study.study_uid)
    assert_retrieved(tmp_path / "study", instances)
    lines = result.jsonl()
    assert sorted(line["sop_instance_uid"] for line in lines) == sorted(
        i.sop_instance_uid for i in instances)
    assert f"{kind}: {len(instances)} done, 0 warnings, 0 failed" in result.stderr

    series = dicom_data.series_of(study.study_uid)[0]
    retrieve(kind, config, tmp_path / "series", f"{study.study_uid}/{series.series_uid}")
    assert_retrieved(tmp_path / "series", dicom_data.instances_of_series(series.series_uid))

    inst = dicom_data.instances_of_series(series.series_uid)[-1]
    retrieve(kind, config, tmp_path / "one",
             f"{inst.study_uid}/{inst.series_uid}/{inst.sop_instance_uid}")
    assert_retrieved(tmp_path / "one", [inst])


@pytest.mark.parametrize("kind", ["move", "get"])
def test_find_uids_piped_into_retrieve(
    kind: str, config: Path, tmp_path: Path, dicom_data: Manifest
) -> None:
    found = medimg("find", "pacs", "--name", "DOE*", "--format", "uids", config=config)
    assert found.code == 0, found.stderr
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    result = medimg(kind, "pacs", "--uids-from", "-", "--out", str(out), "--report",
                    str(report), config=config, input=found.stdout)
    assert result.code == 0, result.stderr
    studies = [s for s in dicom_data.studies if s.patient_id in ("PAT001", "PAT002")]
    instances = [i for s in studies for i in dicom_data.instances_of_study(s.study_uid)]
    assert_retrieved(out, instances)
    data = json.loads(report.read_text())
    assert data["operation"] == kind and data["exit_code"] == 0
    assert data["done"] == len(instances) and data["failed"] == 0
    per_study = {item["name"]: item for item in data["items"]}
    assert set(per_study) == {s.study_uid for s in studies}
    for s in studies:
        n = len(dicom_data.instances_of_study(s.study_uid))
        assert per_study[s.study_uid]["done"] == n
        assert per_study[s.study_uid]["requested"] == n
        assert per_study[s.study_uid]["bytes"] > 0


def test_unknown_move_destination_is_explained(config: Path, tmp_path: Path,
                                                 dicom_data: Manifest) -> None:
    result = medimg("move", "pacs", dicom_data.studies[0].study_uid, "--aet", "NOBODY",
                    "--out", str(tmp_path / "o"), config=config)
    assert result.code == 5, result.stderr
    assert "does not know 'NOBODY' as a move destination" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("medimg: ")
    assert "medimg get" in result.stderr


def test_refused_association_is_exit_4(tmp_path: Path, dcmqrscp: Peer,
                                       dicom_data: Manifest) -> None:
    config = write_config(tmp_path / "c.toml", dcmqrscp.profile_toml("pacs", called_aet="NOPE"))
    for kind in ("move", "get"):
        result = medimg(kind, "pacs", dicom_data.studies[0].study_uid, "--out",
                        str(tmp_path / "o"), config=config)
        assert result.code == 4, result.stderr
        assert "called AE title not recognised" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("1.2.x",), "'1.2.x' is not a UID line"),
        ((), "no UIDs to retrieve"),
        (("1.2", "--layout", "{PatientID}.dcm"), "must contain {SOPInstanceUID}"),
        (("1.2", "--layout", "{Nope}/{SOPInstanceUID}"), "unknown field {Nope}"),
        (("1.2", "--dest", "X", "--skip-existing"), "does not go with --dest"),
    ],
)
def test_bad_retrieve_input_is_a_usage_error(config: Path, tmp_path: Path,
                                             args: tuple[str, ...], fragment: str) -> None:
    result = medimg("move", "pacs", *args, "--out", str(tmp_path / "o"), config=config)
    assert result.code == 2
    assert fragment in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["move", "get"])
def test_parallel_retrieves_everything_exactly_once(
    kind: str, config: Path, tmp_path: Path, dicom_data: Manifest
) -> None:
    uids = [s.study_uid for s in dicom_data.studies[:5]]
    out = tmp_path / "out"
    result = retrieve(kind, config, out, *uids, "--parallel", "3")
    instances = [i for u in uids for i in dicom_data.instances_of_study(u)]
    assert_retrieved(out, instances)
    assert sorted(r["sop_instance_uid"] for r in result.jsonl()) == sorted(
        i.sop_instance_uid for i in instances)
    assert f"{kind}: {len(instances)} done, 0 warnings, 0 failed, 0 skipped" in result.stderr


@pytest.mark.parametrize("kind", ["move", "get"])
def test_skip_existing_fetches_only_what_is_missing(
    kind: str, config: Path, tmp_path: Path, dicom_data: Manifest
) -> None:
    study = max(dicom_data.studies, key=lambda s: len(dicom_data.instances_of_study(s.study_uid)))
    instances = dicom_data.instances_of_study(study.study_uid)
    out = tmp_path / "out"
    retrieve(kind, config, out, study.study_uid)
    removed = [expected_path(out, i) for i in instances[::2]]
    for path in removed:
        path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.dcm")}
    result = retrieve(kind, config, out, study.study_uid, "--skip-existing")
    assert_retrieved(out, instances)
    fetched = {Path(r["path"]) for r in result.jsonl()}
    assert fetched == set(removed)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())
    assert f"{len(removed)} done, 0 warnings, 0 failed, {len(kept)} skipped" in result.stderr


@pytest.mark.parametrize("pacs_kind", ["orthanc", "dcmqrscp"])
def test_third_party_move_to_dcmtk_storescp(
    pacs_kind: str, tmp_path: Path, fresh_peers: Any, dicom_data: Manifest
) -> None:
    from peers import LOOPBACK

    receiver = fresh_peers.storescp()
    study = dicom_data.studies[0]
    pacs = getattr(fresh_peers, pacs_kind)(
        load=[i.path for i in dicom_data.instances_of_study(study.study_uid)],
        modalities={"STORESCP": ("STORESCP", LOOPBACK, receiver.port)},
    )
    config = write_config(tmp_path / "c.toml", pacs.profile_toml("pacs"))
    out = tmp_path / "unused"
    result = medimg("move", "pacs", study.study_uid, "--dest", "STORESCP", "--out", str(out),
                    config=config)
    assert result.code == 0, result.stderr
    instances = dicom_data.instances_of_study(study.study_uid)
    assert f"move: {len(instances)} done, 0 warnings, 0 failed" in result.stderr
    import pydicom

    received = {str(pydicom.dcmread(p).SOPInstanceUID) for p in receiver.received_files()}
    assert received == {i.sop_instance_uid for i in instances}
    assert not out.exists()  # nothing is written here in a third-party move
