"""`medimg echo` against real peers, and every way an association fails."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import medimg, write_config
from peers import Orthanc, Peer, free_port


@pytest.fixture
def config(tmp_path: Path, pacs: Peer) -> Path:
    return write_config(tmp_path / "c.toml", pacs.profile_toml("pacs"))


def test_echo_succeeds_and_reports_each_round_trip(config: Path, pacs: Peer) -> None:
    result = medimg("echo", "pacs", "--count", "3", "--interval", "0", config=config)
    assert result.code == 0, result.stderr
    echoes = result.jsonl()
    assert [e["seq"] for e in echoes] == [1, 2, 3]
    assert all(e["status"] == 0 and e["ms"] > 0 for e in echoes)
    assert echoes[0]["peer"] == f"{pacs.aet}@127.0.0.1:{pacs.port}"
    assert "min/avg/max" in result.stderr


def test_echo_verbose_shows_association_report_on_stderr_only(config: Path, pacs: Peer) -> None:
    result = medimg("-v", "echo", "pacs", config=config)
    assert result.code == 0, result.stderr
    assert f"peer implementation class UID: {pacs.implementation_class_uid_prefix}" in (
        result.stderr)
    assert "peer max PDU:" in result.stderr
    assert "context Verification SOP Class: accepted, " in result.stderr
    assert "peer" not in result.stdout.replace('"peer"', "")  # stdout: results only
    assert len(result.jsonl()) == 1


def test_echo_json_document_has_the_association(config: Path, pacs: Peer) -> None:
    result = medimg("echo", "pacs", "--format", "json", config=config)
    assert result.code == 0, result.stderr
    import json

    doc = json.loads(result.stdout)
    assert doc["association"]["peer_ae"].strip() == pacs.aet
    (context,) = doc["association"]["contexts"]
    assert context["accepted"] and context["abstract_syntax"] == "1.2.840.10008.1.1"
    assert doc["echoes"][0]["status"] == 0


def test_wrong_called_aet_is_rejected_with_diagnosis(
    tmp_path: Path, dcmqrscp: Peer, orthanc_checking_aet: Orthanc
) -> None:
    for peer in (dcmqrscp, orthanc_checking_aet):
        config = write_config(tmp_path / "c.toml", peer.profile_toml("main", called_aet="WRONG"))
        result = medimg("echo", "main", config=config)
        assert result.code == 4, result.stderr
        assert "association rejected" in result.stderr
        assert "called AE title not recognised" in result.stderr
        assert "does not know 'WRONG'" in result.stderr
        assert "check called_aet in profile 'main'" in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stdout == ""


def test_called_aet_override_on_the_command_line(tmp_path: Path, dcmqrscp: Peer) -> None:
    config = write_config(tmp_path / "c.toml", dcmqrscp.profile_toml("main", called_aet="WRONG"))
    result = medimg("echo", "main", "--aec", dcmqrscp.aet, config=config)
    assert result.code == 0, result.stderr


def test_closed_port_is_connection_refused(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "c.toml",
        f'[profiles.closed]\ntype = "dimse"\nhost = "127.0.0.1"\nport = {port}\n'
        'called_aet = "PACS"\n',
    )
    result = medimg("echo", "closed", config=config)
    assert result.code == 3
    assert f"connection refused by 127.0.0.1:{port}" in result.stderr
    assert "check host and port in profile 'closed'" in result.stderr


def test_unresolvable_host(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        '[profiles.nowhere]\ntype = "dimse"\nhost = "pacs.invalid"\nport = 104\n'
        'called_aet = "PACS"\n',
    )
    result = medimg("echo", "nowhere", config=config)
    assert result.code == 3
    assert "cannot resolve host 'pacs.invalid'" in result.stderr
    assert "check host in profile 'nowhere'" in result.stderr


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Fault injection: accepts TCP connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_peer_that_never_answers_times_out(tmp_path: Path, silent_server: int) -> None:
    config = write_config(
        tmp_path / "c.toml",
        f'[profiles.mute]\ntype = "dimse"\nhost = "127.0.0.1"\nport = {silent_server}\n'
        'called_aet = "PACS"\n',
    )
    result = medimg("echo", "mute", "--timeout", "1", config=config)
    assert result.code == 3, result.stderr
    assert "no answer to the association request" in result.stderr
    assert "within 1 s" in result.stderr


@pytest.fixture
def dropping_server() -> Iterator[int]:
    """Fault injection: reads the A-ASSOCIATE-RQ, then closes the connection."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    server.close()
    thread.join(timeout=5)


def test_peer_that_drops_the_connection_is_reported_as_aborted(
    tmp_path: Path, dropping_server: int
) -> None:
    config = write_config(
        tmp_path / "c.toml",
        f'[profiles.drop]\ntype = "dimse"\nhost = "127.0.0.1"\nport = {dropping_server}\n'
        'called_aet = "PACS"\n',
    )
    result = medimg("echo", "drop", "--timeout", "5", config=config)
    assert result.code == 4, result.stderr
    assert "aborted" in result.stderr and "during negotiation" in result.stderr


def test_unknown_profile_is_a_usage_error(config: Path) -> None:
    result = medimg("echo", "nope", config=config)
    assert result.code == 2
    assert "unknown profile 'nope'" in result.stderr and "known: pacs" in result.stderr


def test_calling_aet_not_allowed_by_dcmqrscp_names_both_titles(
    tmp_path: Path, fresh_peers: Any
) -> None:
    peer = fresh_peers.dcmqrscp(allowed_callers=["GOODAET"])
    config = write_config(tmp_path / "c.toml", peer.profile_toml("q"))
    assert medimg("echo", "q", "--aet", "GOODAET", config=config).code == 0
    result = medimg("echo", "q", "--aet", "BADAET", config=config)
    assert result.code == 4
    # dcmqrscp answers "called AE title not recognised" for an unknown caller too.
    assert "called AE title not recognised" in result.stderr
    assert "our calling AE title 'BADAET'" in result.stderr


@pytest.fixture
def picky_scp() -> Iterator[int]:
    """A pynetdicom Verification SCP that accepts only the calling AE title GOODAET."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="PICKY")
    ae.add_supported_context(Verification)
    ae.require_calling_aet = ["GOODAET"]
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    yield port
    server.shutdown()


def test_calling_aet_not_recognised(tmp_path: Path, picky_scp: int) -> None:
    config = write_config(
        tmp_path / "c.toml",
        f'[profiles.picky]\ntype = "dimse"\nhost = "127.0.0.1"\nport = {picky_scp}\n'
        'called_aet = "PICKY"\n',
    )
    assert medimg("echo", "picky", "--aet", "GOODAET", config=config).code == 0
    result = medimg("echo", "picky", config=config)
    assert result.code == 4
    assert "calling AE title not recognised: the PACS does not know us as 'MEDIMG'" in (
        result.stderr)
    assert "register AE 'MEDIMG'" in result.stderr


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listening socket that never accepts, its backlog full: new SYNs go unanswered."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
        fillers.append(client)
    yield port
    for client in fillers:
        client.close()
    server.close()


def test_connect_timeout(tmp_path: Path, full_backlog: int) -> None:
    config = write_config(
        tmp_path / "c.toml",
        f'[profiles.slow]\ntype = "dimse"\nhost = "127.0.0.1"\nport = {full_backlog}\n'
        'called_aet = "PACS"\n',
    )
    result = medimg("echo", "slow", "--timeout", "1", config=config)
    assert result.code == 3, result.stderr
    assert f"no answer from 127.0.0.1:{full_backlog} within 1 s (connect timed out)" in (
        result.stderr)


def test_echo_timing_names_every_phase(config: Path) -> None:
    result = medimg("echo", "pacs", "--timing", "--count", "2", "--interval", "0",
                    config=config)
    assert result.code == 0, result.stderr
    lines = result.jsonl()
    assert [line["seq"] for line in lines[:2]] == [1, 2]
    timing = lines[2]["timing_ms"]
    assert set(timing) == {"dns", "tcp_connect", "associate", "c_echo", "release"}
    assert all(v >= 0 for v in timing.values())
    assert timing["associate"] > 0 and timing["c_echo"] > 0 and timing["release"] > 0
    import json

    doc = json.loads(medimg("echo", "pacs", "--timing", "--format", "json",
                            config=config).stdout)
    assert set(doc["association"]["timing"]) == {"dns", "connect", "associate", "release"}
