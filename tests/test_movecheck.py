"""`echo --move-check`: the move pre-flight against Orthanc and dcmqrscp."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from cli_helpers import medimg, write_config
from peers import Orthanc, Peer, Storescp
from test_dimse_tls import certs, orthanc_profile, tls_orthanc, tls_pool  # noqa: F401
from tls_certs import CertSet


def _check(tmp_path: Path, peer: Peer, port: int, *args: str) -> tuple[int, dict[str, Any], str]:
    config = write_config(tmp_path / "c.toml", peer.profile_toml("pacs", receive_port=port,
                                                                 timeout=10))
    result = medimg("echo", "pacs", "--move-check", "--format", "json", *args, config=config)
    doc: dict[str, Any] = json.loads(result.stdout)
    return result.code, doc, result.stderr


def _verdicts(doc: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["verdict"] for c in doc["checks"]}


def _causes(doc: dict[str, Any]) -> dict[str, str]:
    return {c["key"]: c["state"] for c in doc["causes"]}


def test_move_check_passes_when_the_pacs_knows_our_ae(
    tmp_path: Path, pacs: Peer, medimg_receive_port: int
) -> None:
    code, doc, stderr = _check(tmp_path, pacs, medimg_receive_port)
    assert code == 0, stderr
    assert doc["ok"] is True
    verdicts = _verdicts(doc)
    assert verdicts["receive port"] == "ok"
    assert verdicts["C-MOVE offered"] == "ok"
    assert verdicts["move destination"] == "ok"
    assert verdicts["sample move"] == "ok"  # one instance really arrived at our port
    assert any(entry.startswith(f"{pacs.aet} from 127.0.0.1:")
               for entry in doc["inbound_associations"])
    causes = _causes(doc)
    assert causes["destination-unknown"] == "ruled out"
    assert causes["port-busy"] == "ruled out"
    assert causes["firewall"] == "ruled out"
    # an image that arrived proves our receiver and the PACS agree on TLS or plain
    assert causes["receiver-mismatch"] == "ruled out"
    assert "FOUND" not in causes.values()


def test_move_check_reports_an_unknown_destination(
    tmp_path: Path, pacs: Peer, medimg_receive_port: int
) -> None:
    code, doc, stderr = _check(tmp_path, pacs, medimg_receive_port, "--aet", "STRANGER")
    assert code == 4, stderr
    assert doc["ok"] is False
    assert _verdicts(doc)["move destination"] == "fail"
    assert _causes(doc)["destination-unknown"] == "FOUND"
    # One line on stderr: what is wrong and what to do.
    assert stderr.count("\n") == 1
    assert "'STRANGER'" in stderr and "move destination" in stderr
    assert "add AE 'STRANGER'" in stderr


def test_move_check_reports_a_receive_port_already_taken(
    tmp_path: Path, pacs: Peer, medimg_receive_port: int
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, doc, stderr = _check(tmp_path, pacs, port)
    assert code == 2, stderr
    assert _verdicts(doc)["receive port"] == "fail"
    assert _causes(doc)["port-busy"] == "FOUND"
    assert f"cannot listen on port {port}" in stderr
    # The PACS side was still checked.
    assert _verdicts(doc)["C-MOVE offered"] == "ok"


def test_move_check_table_explains_each_cause(
    tmp_path: Path, pacs: Peer, medimg_receive_port: int
) -> None:
    config = write_config(tmp_path / "c.toml", pacs.profile_toml(
        "pacs", receive_port=medimg_receive_port))
    result = medimg("echo", "pacs", "--move-check", "--format", "table", config=config)
    assert result.code == 0, result.stderr
    assert "why images never arrive" in result.stdout
    assert "[ruled out] the PACS does not know AE 'MEDIMG' as a move destination" in result.stdout
    assert "-> open the port inbound" in result.stdout
    assert "[FAIL]" not in result.stdout


def test_move_check_of_a_peer_without_query_retrieve(tmp_path: Path, storescp: Storescp) -> None:
    code, doc, stderr = _check(tmp_path, storescp, 0)
    assert code == 4, stderr
    assert _verdicts(doc)["C-MOVE offered"] == "fail"
    assert _verdicts(doc)["receive port"] == "warn"  # 0: a PACS needs a fixed port
    assert _causes(doc)["move-not-offered"] == "FOUND"
    assert "accepted no C-MOVE context" in stderr


# DICOM TLS: the check's receiver speaks TLS when the profile says receive_tls = true.
# The TLS Orthanc and the certificates are test_dimse_tls's module fixtures.


def test_move_check_over_tls_with_a_tls_receiver(
    tmp_path: Path, certs: CertSet, tls_orthanc: tuple[Orthanc, int]  # noqa: F811
) -> None:
    profile = orthanc_profile(tls_orthanc, certs, receive_tls=True,
                              cert_file=str(certs.server.cert), key_file=str(certs.server.key))
    config = write_config(tmp_path / "c.toml", profile)
    result = medimg("echo", "pacs", "--move-check", "--format", "json", config=config)
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert _verdicts(doc)["sample move"] == "ok"


def test_move_check_over_tls_with_a_plain_receiver_finds_the_problem(
    tmp_path: Path, certs: CertSet, tls_orthanc: tuple[Orthanc, int]  # noqa: F811
) -> None:
    config = write_config(tmp_path / "c.toml", orthanc_profile(tls_orthanc, certs))
    result = medimg("echo", "pacs", "--move-check", "--format", "json", config=config,
                    timeout=90)
    assert result.code == 4, result.stderr
    doc = json.loads(result.stdout)
    assert "sample move" in [c["name"] for c in doc["checks"] if c["verdict"] == "fail"]
    causes = _causes(doc)
    assert causes["receiver-mismatch"] == "FOUND"
    assert causes["destination-unknown"] == "ruled out"  # it did connect to us
    assert "receive_tls" in result.stderr
