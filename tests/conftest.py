"""Session fixtures: generated DICOM data and real peers (Orthanc, dcmqrscp) on loopback.

Fixtures (all session-scoped unless said otherwise):

- ``dicom_data`` -> ``dicom_data.Manifest``: the small archive (6 patients, 10 studies).
- ``medimg_receive_port`` -> int: a free port that both peers know as the C-MOVE
  destination ``MEDIMG`` (AE title MEDIMG at 127.0.0.1); run medimg's embedded
  storage SCP there.
- ``orthanc`` -> ``peers.Orthanc``: Orthanc + DICOMweb, loaded with ``dicom_data``.
- ``dcmqrscp`` -> ``peers.Dcmqrscp``: DCMTK dcmqrscp (AE DCMQR), loaded with ``dicom_data``.
- ``sandbox`` -> ``sandbox_peer.Sandbox``: ``medimg sandbox`` loaded with ``dicom_data``.
- ``pacs`` -> ``peers.Peer``: parametrized over ``orthanc``, ``dcmqrscp`` and ``sandbox``.
- ``orthanc_checking_aet`` -> ``peers.Orthanc``: an empty Orthanc with
  ``DicomCheckCalledAet: true`` (rejects a wrong called AE title).
- ``peer_pool`` -> ``PeerPool``: start more peers that live until the session ends.
- ``fresh_peers`` (function scope) -> ``PeerPool``: peers killed after the test
  (for tests that change a PACS's content, or need an empty one).
- ``fhir_server`` -> ``fhir_peer.FhirServer``: sekmet-fhir (FHIR R4, JWT access tokens
  required) loaded with patients, ImagingStudies of ``dicom_data`` and a DiagnosticReport.
- ``oauth_server`` -> ``oauth_peer.OAuthServer``: panva's oidc-provider (Node.js) on
  loopback; issues HS256 JWT access tokens with ``.jwt_secret`` (see oauth_peer's docstring).
- ``storescp`` (function scope) -> ``peers.Storescp``: DCMTK storescp (AE STORESCP)
  writing into an empty directory; ``fresh_peers.storescp(extra_args=...)`` for
  one with other options.

Peers are stopped at session end even when setup or tests fail (and, as a last
resort, at interpreter exit or by the kernel if pytest is killed).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Make the helper modules importable whatever pytest's import mode.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from dicom_data import Manifest, generate  # noqa: E402
from fhir_peer import FhirServer, start_loaded  # noqa: E402
from oauth_peer import OAuthServer, start_oauth_server  # noqa: E402
from peers import (  # noqa: E402
    LOOPBACK,
    Dcmqrscp,
    Modalities,
    Orthanc,
    Peer,
    PeerPool,
    Storescp,
    free_port,
)
from sandbox_peer import Sandbox  # noqa: E402

PACS_NAMES = ("orthanc", "dcmqrscp", "sandbox")


@pytest.fixture(scope="session")
def dicom_data(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return generate(tmp_path_factory.mktemp("dicom-data"), seed=1234)


@pytest.fixture(scope="session")
def medimg_receive_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def move_destinations(medimg_receive_port: int) -> Modalities:
    """What the session peers know: ``{"MEDIMG": ("MEDIMG", "127.0.0.1", port)}``."""
    return {"MEDIMG": ("MEDIMG", LOOPBACK, medimg_receive_port)}


@pytest.fixture(scope="session")
def peer_pool(
    tmp_path_factory: pytest.TempPathFactory, move_destinations: Modalities
) -> Iterator[PeerPool]:
    pool = PeerPool(tmp_path_factory.mktemp("peers"), move_destinations)
    try:
        yield pool
    finally:
        pool.stop_all()  # graceful, in parallel: Orthanc 1.10 needs ~3.5 s to shut down


@pytest.fixture
def fresh_peers(tmp_path: Path, move_destinations: Modalities) -> Iterator[PeerPool]:
    # SIGKILL at teardown: a graceful Orthanc shutdown costs ~3.5 s per test
    pool = PeerPool(tmp_path / "peers", move_destinations, graceful=False)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="session")
def orthanc(peer_pool: PeerPool, dicom_data: Manifest) -> Orthanc:
    return peer_pool.orthanc(load=dicom_data.paths)


@pytest.fixture(scope="session")
def dcmqrscp(peer_pool: PeerPool, dicom_data: Manifest) -> Dcmqrscp:
    return peer_pool.dcmqrscp(load=dicom_data.paths)


@pytest.fixture(scope="session")
def sandbox(
    tmp_path_factory: pytest.TempPathFactory, peer_pool: PeerPool, dicom_data: Manifest
) -> Sandbox:
    """`medimg sandbox` holding ``dicom_data`` (indexed from its data folder at start)."""
    peer = Sandbox.start(tmp_path_factory.mktemp("sandbox"), modalities=peer_pool.modalities,
                         preload=dicom_data.paths)
    peer_pool.peers.append(peer)
    return peer


@pytest.fixture(scope="session", params=PACS_NAMES)
def pacs(request: pytest.FixtureRequest) -> Peer:
    peer: Peer = request.getfixturevalue(request.param)
    return peer


@pytest.fixture(scope="session")
def orthanc_checking_aet(peer_pool: PeerPool) -> Orthanc:
    return peer_pool.orthanc(check_called_aet=True, dicomweb=False)


@pytest.fixture
def storescp(fresh_peers: PeerPool) -> Storescp:
    return fresh_peers.storescp()


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory, dicom_data: Manifest
                ) -> Iterator[FhirServer]:
    """sekmet-fhir on loopback, loaded with ``fhir_peer.seed_bundle(dicom_data)``."""
    server = start_loaded(tmp_path_factory.mktemp("fhir"), dicom_data)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def oauth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthServer]:
    """The OAuth / OpenID provider (oidc-provider) on a free loopback port."""
    server = start_oauth_server(tmp_path_factory.mktemp("oauth"))
    try:
        yield server
    finally:
        server.stop()
