"""Retrieval when the peer misbehaves: hostile values, aborts, stalls, Ctrl-C, resume.

The peer is a pynetdicom C-GET/C-FIND SCP that the test controls (fault
injection: real PACS cannot be made to do these things on cue).
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import medimg, write_config
from dicom_data import Manifest
from peers import free_port

from medimg_cli.storage import PART_SUFFIX

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class GetScp:
    """What the test SCP serves and how it misbehaves."""

    port: int
    datasets: list[Any] = field(default_factory=list)
    pause_after: int | None = None  # stall after this many instances ...
    release: threading.Event = field(default_factory=threading.Event)
    abort_after: int | None = None  # ... or abort the association
    delay: float = 0.0  # seconds before each instance
    sent: list[str] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    move_port: int | None = None  # where the AE MEDIMG listens, for C-MOVE


@pytest.fixture
def get_scp() -> Iterator[GetScp]:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    )

    state = GetScp(port=free_port())

    def matching(identifier: Any) -> list[Any]:
        raw = identifier.get("SOPInstanceUID") or []
        wanted_sops = {str(u) for u in ([raw] if isinstance(raw, str) else raw)} - {""}
        return [ds for ds in state.datasets
                if ds.StudyInstanceUID == identifier.StudyInstanceUID
                and (not identifier.get("SeriesInstanceUID")
                     or ds.SeriesInstanceUID == identifier.SeriesInstanceUID)
                and (not wanted_sops or ds.SOPInstanceUID in wanted_sops)]

    def on_get(event: Any) -> Iterator[Any]:
        found = matching(event.identifier)
        yield len(found)
        for n, ds in enumerate(found, start=1):
            if event.is_cancelled:
                state.cancelled.set()
                yield 0xFE00, None
                return
            if state.abort_after is not None and n > state.abort_after:
                # From another thread: abort() joins the association's own thread.
                threading.Thread(target=event.assoc.abort, daemon=True).start()
                state.release.wait(10)
                return
            if state.pause_after is not None and n > state.pause_after:
                # event.is_cancelled is true once: pynetdicom consumes the C-CANCEL.
                deadline = time.monotonic() + 30
                cancelled = False
                while not cancelled and not state.release.wait(0.05):
                    cancelled = event.is_cancelled or time.monotonic() > deadline
                if cancelled:
                    state.cancelled.set()
                    yield 0xFE00, None
                    return
            time.sleep(state.delay)
            state.sent.append(str(ds.SOPInstanceUID))
            yield 0xFF00, ds

    def on_move(event: Any) -> Iterator[Any]:
        if event.move_destination.strip() != "MEDIMG" or state.move_port is None:
            yield None, None  # unknown destination: pynetdicom answers 0xA801
            return
        from pynetdicom import build_context

        yield "127.0.0.1", state.move_port, {"contexts": [build_context(CT), build_context(MR)]}
        yield from on_get(event)

    def on_find(event: Any) -> Iterator[Any]:
        from pydicom import Dataset

        ident = event.identifier
        for ds in state.datasets:
            if ds.StudyInstanceUID != ident.StudyInstanceUID:
                continue
            level = ident.QueryRetrieveLevel
            if level == "SERIES" or (level == "IMAGE" and (
                    not ident.get("SeriesInstanceUID")
                    or ident.SeriesInstanceUID == ds.SeriesInstanceUID)):
                rsp = Dataset()
                rsp.QueryRetrieveLevel = level
                rsp.StudyInstanceUID = ds.StudyInstanceUID
                rsp.SeriesInstanceUID = ds.SeriesInstanceUID
                if level == "IMAGE":
                    rsp.SOPInstanceUID = ds.SOPInstanceUID
                    rsp.SOPClassUID = ds.SOPClassUID
                yield 0xFF00, rsp
        yield 0x0000, None

    ae = AE(ae_title="TESTGET")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    for sop in (CT, MR):
        ae.add_supported_context(sop, scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", state.port), block=False,
                             evt_handlers=[(evt.EVT_C_GET, on_get), (evt.EVT_C_FIND, on_find),
                                           (evt.EVT_C_MOVE, on_move)])
    yield state
    state.release.set()
    server.shutdown()


def config_for(tmp_path: Path, port: int, receive_port: int = 0) -> Path:
    return write_config(
        tmp_path / "c.toml",
        f'[profiles.t]\ntype = "dimse"\nhost = "127.0.0.1"\nport = {port}\n'
        f'called_aet = "TESTGET"\nreceive_port = {receive_port or free_port()}\n',
    )


def load(manifest: Manifest, study: str | None = None) -> list[Any]:
    import pydicom

    return [pydicom.dcmread(i.path) for i in manifest.instances
            if study is None or i.study_uid == study]


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def assert_no_partial_or_truncated(root: Path) -> None:
    import pydicom

    assert not list(root.rglob(f"*{PART_SUFFIX}")), "a temporary file was left behind"
    for path in files_under(root):
        pydicom.dcmread(path).PixelData  # noqa: B018 - raises if truncated


def test_hostile_values_cannot_write_outside_out(
    tmp_path: Path, get_scp: GetScp, dicom_data: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydicom import config as pydicom_config

    # The test SCP must be able to send what a broken or hostile PACS would.
    monkeypatch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.IGNORE)
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.IGNORE)
    template = load(dicom_data)[0]
    hostile_ids = ["../../escaped", "/etc/passwd", "a\x00b/../../c", "..", "X" * 300, "~root"]
    for n, patient_id in enumerate(hostile_ids, start=1):
        ds = copy.deepcopy(template)
        ds.PatientID = patient_id
        ds.SOPInstanceUID = f"1.2.3.{n}"
        get_scp.datasets.append(ds)
    for series, sop in [("../../../../tmp/evil-series", "1.2.3.90"),
                        ("1.2.3", "../../evil-sop"), ("1.2.3", "/tmp/evil-abs")]:
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = sop
        get_scp.datasets.append(ds)
    out = tmp_path / "deep" / "out"
    result = medimg("get", "t", template.StudyInstanceUID, "--out", str(out),
                    config=config_for(tmp_path, get_scp.port))
    written = [p for p in files_under(tmp_path) if p.name != "c.toml"]
    assert written, result.stderr
    for path in written:
        assert out.resolve() in path.resolve().parents, f"{path} escaped --out"
        assert all(len(part) <= 64 for part in path.relative_to(out).parts)
    assert not Path("/tmp/evil-series").exists() and not Path("/tmp/evil-abs").exists()
    assert result.code == 0, result.stderr
    assert len(written) == len(get_scp.datasets)


def test_peer_aborting_mid_transfer_leaves_only_complete_files(
    tmp_path: Path, get_scp: GetScp, dicom_data: Manifest
) -> None:
    study = max(dicom_data.studies, key=lambda s: len(dicom_data.instances_of_study(s.study_uid)))
    get_scp.datasets = load(dicom_data, study.study_uid)
    get_scp.abort_after = 2
    out = tmp_path / "out"
    result = medimg("get", "t", study.study_uid, "--out", str(out),
                    config=config_for(tmp_path, get_scp.port))
    assert result.code == 4, result.stderr
    assert "aborted" in result.stderr
    assert len(files_under(out)) == 2
    assert_no_partial_or_truncated(out)


def test_stalled_peer_times_out_on_idle(tmp_path: Path, get_scp: GetScp,
                                        dicom_data: Manifest) -> None:
    study = dicom_data.studies[0]
    get_scp.datasets = load(dicom_data, study.study_uid)
    get_scp.pause_after = 1
    started = time.monotonic()
    result = medimg("get", "t", study.study_uid, "--out", str(tmp_path / "out"),
                    "--timeout", "1", config=config_for(tmp_path, get_scp.port))
    assert result.code == 3, result.stderr
    assert "for 1 s (no response and no image)" in result.stderr
    assert time.monotonic() - started < 10
    assert_no_partial_or_truncated(tmp_path / "out")


def test_slow_but_moving_transfer_outlives_the_timeout(
    tmp_path: Path, get_scp: GetScp, dicom_data: Manifest
) -> None:
    """Images 0.6 s apart (2.4 s in all) with --timeout 1: idle time, not total time."""
    study = max(dicom_data.studies, key=lambda s: len(dicom_data.instances_of_study(s.study_uid)))
    get_scp.datasets = load(dicom_data, study.study_uid)[:4]
    get_scp.delay = 0.6
    result = medimg("get", "t", study.study_uid, "--out", str(tmp_path / "out"),
                    "--timeout", "1", config=config_for(tmp_path, get_scp.port))
    assert result.code == 0, result.stderr
    assert len(files_under(tmp_path / "out")) == 4


def test_ctrl_c_cancels_and_removes_partial_files(
    tmp_path: Path, get_scp: GetScp, dicom_data: Manifest
) -> None:
    study = max(dicom_data.studies, key=lambda s: len(dicom_data.instances_of_study(s.study_uid)))
    get_scp.datasets = load(dicom_data, study.study_uid)
    get_scp.pause_after = 2
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medimg_cli", "-vv", "--config",
             str(config_for(tmp_path, get_scp.port)), "get", "t", study.study_uid,
             "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
        deadline = time.monotonic() + 20
        while len(get_scp.sent) < 2 or len(files_under(out)) < 2:
            assert time.monotonic() < deadline, "the first instances never arrived"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    err = log.read_text()
    assert proc.returncode == 130, err
    assert "medimg: interrupted" in err
    assert get_scp.cancelled.wait(5), "no C-CANCEL reached the SCP:\n" + err
    assert_no_partial_or_truncated(out)


@pytest.mark.parametrize("kind", ["get", "move"])
def test_killed_retrieval_resumes_to_the_same_tree(
    kind: str, tmp_path: Path, get_scp: GetScp, dicom_data: Manifest
) -> None:
    study = max(dicom_data.studies, key=lambda s: len(dicom_data.instances_of_study(s.study_uid)))
    get_scp.datasets = load(dicom_data, study.study_uid)
    get_scp.move_port = free_port()
    config = config_for(tmp_path, get_scp.port, get_scp.move_port)
    whole = tmp_path / "whole"
    first = medimg(kind, "t", study.study_uid, "--out", str(whole), config=config)
    assert first.code == 0, first.stderr

    get_scp.sent.clear()
    get_scp.pause_after = 3
    out = tmp_path / "resumed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "medimg_cli", "--config", str(config),
         kind, "t", study.study_uid, "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while len(files_under(out)) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(files_under(out)) == 3
    on_disk = {p.stem for p in files_under(out)}

    get_scp.pause_after = None
    get_scp.release.set()
    get_scp.sent.clear()
    result = medimg(kind, "t", study.study_uid, "--out", str(out), "--skip-existing",
                    config=config)
    assert result.code == 0, result.stderr
    total = len(get_scp.datasets)
    assert not on_disk & set(get_scp.sent), "instances on disk were fetched again"
    assert f"{total - 3} done, 0 warnings, 0 failed, 3 skipped" in result.stderr
    relative = [p.relative_to(whole) for p in files_under(whole)]
    assert [p.relative_to(out) for p in files_under(out)] == relative
    for rel in relative:
        assert (out / rel).read_bytes()[132:] != b""
        assert (out / rel).read_bytes() == (whole / rel).read_bytes()
    assert_no_partial_or_truncated(out)
