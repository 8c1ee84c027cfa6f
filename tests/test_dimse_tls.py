"""DICOM TLS against real peers: DCMTK storescp (+tls) and Orthanc with DICOM TLS.

The suite makes its own CA and certificates (tests/tls_certs.py). storescp
checks echo and store, and every certificate problem (it is quick to start
with another certificate); Orthanc checks find and move, the move's
sub-associations coming back over TLS to medimg's own receiver
(`receive_tls`). Debian's dcmqrscp is built without TLS, hence Orthanc.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cli_helpers import medimg, write_config
from dicom_data import Manifest
from peers import (
    LOOPBACK,
    READY_CHECK_AET,
    Orthanc,
    PeerPool,
    Storescp,
    _tcp_connects,
    free_port,
    run_dcmtk,
)
from tls_certs import Cert, CertSet, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return make_certs(tmp_path_factory.mktemp("certs"))


class TlsStorescp(Storescp):
    """storescp with +tls; its readiness C-ECHO goes over TLS too (with our client
    certificate, not checking the server's: some of these servers have bad ones)."""

    echo_tls: ClassVar[Sequence[str]] = ()

    def _ready(self) -> bool:
        if not _tcp_connects(self.port):
            return False
        result = run_dcmtk(["echoscu", "-to", "5", *self.echo_tls, "-aet", READY_CHECK_AET,
                            "-aec", self.aet, LOOPBACK, str(self.port)], timeout=15)
        return result.returncode == 0


def start_tls_storescp(pool: PeerPool, certs: CertSet, server: Cert, *,
                       require_client_cert: bool = True) -> Storescp:
    client = certs.client
    cls = type("TlsStorescp", (TlsStorescp,), {
        "echo_tls": ("+tls", str(client.key), str(client.cert), "-ic")})
    args = ["+tls", str(server.key), str(server.cert), "+cf", str(certs.ca),
            "-rc" if require_client_cert else "-ic"]
    peer = cls.start(pool._workdir("storescp-tls"), extra_args=args)
    pool.peers.append(peer)
    return peer


@pytest.fixture(scope="module")
def tls_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerPool]:
    pool = PeerPool(tmp_path_factory.mktemp("tls-peers"), graceful=False)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def tls_storescp(tls_pool: PeerPool, certs: CertSet) -> Storescp:
    """storescp with our server certificate, requiring a client certificate from our CA."""
    return start_tls_storescp(tls_pool, certs, certs.server)


def tls_profile(name: str, peer: Any, certs: CertSet, *, client: bool = True,
                ca: Path | None = None, **extra: Any) -> str:
    keys: dict[str, Any] = {"tls": True, "ca_file": str(ca or certs.ca), "timeout": 10}
    if client:
        keys.update(cert_file=str(certs.client.cert), key_file=str(certs.client.key))
    keys.update(extra)
    text: str = peer.profile_toml(name, **keys)
    return text


# --------------------------------------------------------------------------
# storescp: echo and store


def test_echo_over_tls_shows_the_handshake_in_its_timing(
    tmp_path: Path, certs: CertSet, tls_storescp: Storescp
) -> None:
    config = write_config(tmp_path / "c.toml", tls_profile("pacs", tls_storescp, certs))
    result = medimg("echo", "pacs", "--timing", "--format", "jsonl", config=config)
    assert result.code == 0, result.stderr
    lines = result.jsonl()
    assert lines[0]["status"] == 0
    timing = lines[-1]["timing_ms"]
    assert list(timing) == ["dns", "tcp_connect", "tls_handshake", "associate", "c_echo",
                            "release"]
    assert timing["tls_handshake"] > 0


def test_plain_echo_timing_has_no_tls_phase(
    tmp_path: Path, fresh_peers: PeerPool
) -> None:
    peer = fresh_peers.storescp()
    config = write_config(tmp_path / "c.toml", peer.profile_toml("pacs"))
    result = medimg("echo", "pacs", "--timing", "--format", "jsonl", config=config)
    assert result.code == 0, result.stderr
    assert "tls_handshake" not in result.jsonl()[-1]["timing_ms"]


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_stow_over_tls_delivers_every_file(
    tmp_path: Path, certs: CertSet, tls_pool: PeerPool, dicom_data: Manifest, parallel: str
) -> None:
    peer = start_tls_storescp(tls_pool, certs, certs.server)
    config = write_config(tmp_path / "c.toml", tls_profile("pacs", peer, certs))
    result = medimg("stow", "pacs", str(dicom_data.root), "--parallel", parallel,
                    config=config, timeout=120)
    assert result.code == 0, result.stderr
    assert len(result.jsonl()) == len(dicom_data.instances)
    assert all(r["status"] == "stored" for r in result.jsonl())
    received = peer.received_files()
    assert len(received) == len(dicom_data.instances)
    sops = {i.sop_instance_uid for i in dicom_data.instances}
    assert {p.name.split(".", 1)[1] for p in received} == sops


# --------------------------------------------------------------------------
# Diagnosis: each certificate problem has its own line, and exit 3


def diagnosis(tmp_path: Path, profile: str) -> tuple[int, str]:
    config = write_config(tmp_path / "c.toml", profile)
    result = medimg("echo", "pacs", config=config, timeout=60)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.code, result.stderr


def test_missing_client_certificate(tmp_path: Path, certs: CertSet,
                                    tls_storescp: Storescp) -> None:
    code, line = diagnosis(tmp_path, tls_profile("pacs", tls_storescp, certs, client=False))
    assert code == 3
    assert "requires a client certificate and we sent none" in line
    assert "set cert_file and key_file in profile 'pacs'" in line


def test_expired_server_certificate(tmp_path: Path, certs: CertSet,
                                    tls_pool: PeerPool) -> None:
    peer = start_tls_storescp(tls_pool, certs, certs.expired, require_client_cert=False)
    code, line = diagnosis(tmp_path, tls_profile("pacs", peer, certs))
    assert code == 3
    assert "has expired" in line and "renew" in line


def test_server_certificate_from_an_unknown_ca(tmp_path: Path, certs: CertSet,
                                               tls_pool: PeerPool) -> None:
    peer = start_tls_storescp(tls_pool, certs, certs.wrong_ca_server,
                              require_client_cert=False)
    code, line = diagnosis(tmp_path, tls_profile("pacs", peer, certs))
    assert code == 3
    assert "signed by an unknown CA" in line
    assert "set ca_file in profile 'pacs'" in line


def test_server_certificate_for_another_host(tmp_path: Path, certs: CertSet,
                                             tls_pool: PeerPool) -> None:
    peer = start_tls_storescp(tls_pool, certs, certs.other_host, require_client_cert=False)
    code, line = diagnosis(tmp_path, tls_profile("pacs", peer, certs))
    assert code == 3
    assert "does not name host '127.0.0.1'" in line and "hostname mismatch" in line


def test_client_certificate_the_peer_does_not_trust(tmp_path: Path, certs: CertSet,
                                                    tls_storescp: Storescp) -> None:
    wrong = certs.wrong_ca_server  # a valid certificate, but from a CA storescp does not know
    profile = tls_profile("pacs", tls_storescp, certs, client=False,
                          cert_file=str(wrong.cert), key_file=str(wrong.key))
    code, line = diagnosis(tmp_path, profile)
    assert code == 3
    assert "refused our client certificate" in line


def test_tls_verify_false_accepts_an_expired_certificate_with_a_warning(
    tmp_path: Path, certs: CertSet, tls_pool: PeerPool
) -> None:
    peer = start_tls_storescp(tls_pool, certs, certs.expired, require_client_cert=False)
    config = write_config(tmp_path / "c.toml",
                          tls_profile("pacs", peer, certs, tls_verify=False))
    result = medimg("echo", "pacs", config=config)
    assert result.code == 0, result.stderr
    assert "tls_verify = false" in result.stderr


def test_plain_request_to_a_tls_port(tmp_path: Path, tls_storescp: Storescp) -> None:
    code, line = diagnosis(tmp_path, tls_storescp.profile_toml("pacs", timeout=10))
    assert code == 3
    assert "the port may expect DICOM TLS" in line and "set tls = true" in line


def test_tls_request_to_a_plain_port(tmp_path: Path, certs: CertSet,
                                     fresh_peers: PeerPool) -> None:
    peer = fresh_peers.storescp()
    code, line = diagnosis(tmp_path, tls_profile("pacs", peer, certs))
    assert code == 3
    assert "does not answer in TLS" in line and "set tls = false in profile 'pacs'" in line


def test_unreadable_key_file_is_a_config_error(tmp_path: Path, certs: CertSet,
                                               tls_storescp: Storescp) -> None:
    profile = tls_profile("pacs", tls_storescp, certs, key_file=str(tmp_path / "nope.key"))
    code, line = diagnosis(tmp_path, profile)
    assert code == 2
    assert "key_file" in line and "does not exist" in line


def test_tls_min_version_is_validated(tmp_path: Path, tls_storescp: Storescp) -> None:
    config = write_config(tmp_path / "c.toml",
                          tls_storescp.profile_toml("pacs", tls=True, tls_min_version="1.1"))
    result = medimg("echo", "pacs", config=config)
    assert result.code == 2
    assert "tls_min_version" in result.stderr and '"1.2" or "1.3"' in result.stderr


def test_tls_min_version_1_3_works(tmp_path: Path, certs: CertSet,
                                   tls_storescp: Storescp) -> None:
    config = write_config(tmp_path / "c.toml",
                          tls_profile("pacs", tls_storescp, certs, tls_min_version=1.3))
    result = medimg("echo", "pacs", config=config)
    assert result.code == 0, result.stderr


# --------------------------------------------------------------------------
# Orthanc with DICOM TLS: find, and move back to our TLS receiver


@pytest.fixture(scope="module")
def tls_orthanc(tls_pool: PeerPool, certs: CertSet, dicom_data: Manifest
                ) -> tuple[Orthanc, int]:
    """Orthanc speaking only DICOM TLS (client certificates required), with MEDIMG as a
    TLS move destination on a port of its own."""
    receive_port = free_port()
    extra = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(certs.server.cert),
        "DicomTlsPrivateKey": str(certs.server.key),
        "DicomTlsTrustedCertificates": str(certs.ca),
        "DicomTlsRemoteCertificateRequired": True,
        "DicomModalities": {
            "MEDIMG": {"AET": "MEDIMG", "Host": LOOPBACK, "Port": receive_port,
                       "UseDicomTls": True},
        },
    }
    peer = Orthanc.start(tls_pool._workdir("orthanc-tls"), dicomweb=False, extra_config=extra)
    tls_pool.peers.append(peer)
    peer.load(dicom_data.paths)  # over HTTP
    return peer, receive_port


def orthanc_profile(tls_orthanc: tuple[Orthanc, int], certs: CertSet, **extra: Any) -> str:
    peer, receive_port = tls_orthanc
    # Our receiver shows the PACS the server certificate and wants the PACS's
    # certificate to come from our CA.
    return tls_profile("pacs", peer, certs, calling_aet="MEDIMG", receive_port=receive_port,
                       **extra)


def test_find_over_tls(tmp_path: Path, certs: CertSet, tls_orthanc: tuple[Orthanc, int],
                       dicom_data: Manifest) -> None:
    config = write_config(tmp_path / "c.toml", orthanc_profile(tls_orthanc, certs))
    result = medimg("find", "pacs", "--level", "study", config=config)
    assert result.code == 0, result.stderr
    uids = {r["0020000D"]["Value"][0] for r in result.jsonl()}
    assert uids == {s.study_uid for s in dicom_data.studies}


def test_move_over_tls_to_a_tls_receiver(tmp_path: Path, certs: CertSet,
                                         tls_orthanc: tuple[Orthanc, int],
                                         dicom_data: Manifest) -> None:
    study = dicom_data.studies[0]
    profile = orthanc_profile(tls_orthanc, certs, receive_tls=True,
                              cert_file=str(certs.server.cert),
                              key_file=str(certs.server.key))
    config = write_config(tmp_path / "c.toml", profile)
    out = tmp_path / "out"
    result = medimg("move", "pacs", study.study_uid, "--out", str(out), config=config)
    assert result.code == 0, result.stderr
    files = [p for p in out.rglob("*.dcm")]
    expected = [i for i in dicom_data.instances if i.study_uid == study.study_uid]
    assert len(files) == len(expected) > 0
    assert {json.loads(line)["sop_instance_uid"] for line in result.stdout.splitlines()} == {
        i.sop_instance_uid for i in expected}


def test_move_to_a_plain_receiver_gets_nothing_and_says_so(
    tmp_path: Path, certs: CertSet, tls_orthanc: tuple[Orthanc, int], dicom_data: Manifest
) -> None:
    """Without receive_tls, Orthanc's TLS sub-associations fail: the move must not hang,
    and the warning names the cause."""
    study = dicom_data.studies[0]
    config = write_config(tmp_path / "c.toml", orthanc_profile(tls_orthanc, certs))
    result = medimg("move", "pacs", study.study_uid, "--out", str(tmp_path / "out"),
                    config=config, timeout=60)
    assert result.code in (5, 6), result.stderr
    assert "opened a TLS connection to our receiver" in result.stderr
    assert "set receive_tls = true" in result.stderr
    assert not list((tmp_path / "out").rglob("*.dcm"))


def test_get_over_tls(tmp_path: Path, certs: CertSet, tls_orthanc: tuple[Orthanc, int],
                      dicom_data: Manifest) -> None:
    study = dicom_data.studies[1]
    config = write_config(tmp_path / "c.toml", orthanc_profile(tls_orthanc, certs))
    out = tmp_path / "out"
    result = medimg("get", "pacs", study.study_uid, "--out", str(out), config=config)
    assert result.code == 0, result.stderr
    expected = [i for i in dicom_data.instances if i.study_uid == study.study_uid]
    assert len(list(out.rglob("*.dcm"))) == len(expected) > 0


def test_plain_request_to_orthanc_tls_port(tmp_path: Path,
                                           tls_orthanc: tuple[Orthanc, int]) -> None:
    peer, _ = tls_orthanc
    code, line = diagnosis(tmp_path, peer.profile_toml("pacs", timeout=10))
    assert code == 3, line
    assert "DICOM TLS" in line and "set tls = true" in line


def test_tls_request_to_orthanc_plain_port(tmp_path: Path, certs: CertSet,
                                           orthanc: Orthanc) -> None:
    code, line = diagnosis(tmp_path, tls_profile("pacs", orthanc, certs))
    assert code == 3, line
    assert "does not answer in TLS" in line
