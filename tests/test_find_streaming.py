"""`find` streams matches as they arrive and cancels at --limit.

The peer is a pynetdicom C-FIND SCP that the test controls: it can stall
between matches and records whether a C-CANCEL arrived, which Orthanc and
dcmqrscp cannot be made to show.
"""

from __future__ import annotations

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
from peers import free_port


@dataclass
class ControlledScp:
    port: int
    release: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    sent: int = 0
    first_batch: int = 3
    endless: bool = False


@pytest.fixture
def scp() -> Iterator[ControlledScp]:
    from pydicom import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind,
    )

    state = ControlledScp(port=free_port())

    def match(n: int) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = f"1.2.3.{n}"
        ds.PatientName = f"PATIENT^{n}"
        return ds

    def on_find(event: Any) -> Iterator[tuple[int, Any]]:
        n = 0
        while True:
            if event.is_cancelled:
                state.cancelled.set()
                yield 0xFE00, None
                return
            n += 1
            if n > state.first_batch and not state.endless:
                state.release.wait(20)
                if n > state.first_batch + 2:
                    break
            state.sent = n
            yield 0xFF00, match(n)
            if state.endless:
                time.sleep(0.01)
        yield 0x0000, None

    ae = AE(ae_title="CONTROLLED")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = ae.start_server(("127.0.0.1", state.port), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, on_find)])
    yield state
    state.release.set()
    server.shutdown()


def config_for(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path / "c.toml",
        f'[profiles.ctl]\ntype = "dimse"\nhost = "127.0.0.1"\nport = {port}\n'
        'called_aet = "CONTROLLED"\n',
    )


@pytest.mark.parametrize("fmt", ["jsonl", "uids", "csv"])
def test_matches_are_written_as_they_arrive(
    tmp_path: Path, scp: ControlledScp, fmt: str
) -> None:
    config = config_for(tmp_path, scp.port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "medimg_cli", "--config", str(config), "find", "ctl",
         "--format", fmt],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    lines = []
    header = 1 if fmt == "csv" else 0
    # The SCP holds back its last matches until released: the first ones must
    # already be on our stdout.
    for _ in range(scp.first_batch + header):
        lines.append(proc.stdout.readline())
    assert proc.poll() is None, "medimg finished before the SCP was released"
    assert "1.2.3.3" in lines[-1]
    scp.release.set()
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert len(lines) + len(rest.splitlines()) == scp.first_batch + 2 + header


def test_limit_sends_c_cancel(tmp_path: Path, scp: ControlledScp) -> None:
    scp.endless = True
    result = medimg("find", "ctl", "--limit", "5", "--format", "uids",
                    config=config_for(tmp_path, scp.port), timeout=60)
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [f"1.2.3.{n}" for n in range(1, 6)]
    assert scp.cancelled.wait(5), "the SCP never saw a C-CANCEL"
