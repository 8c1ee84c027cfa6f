"""`echo --probe`: the accept/reject matrix matches what the peer is configured to accept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli_helpers import medimg, write_config
from peers import Orthanc, Peer, PeerPool

from medimg_cli.dimse.probe import (
    EXPLICIT,
    IMPLICIT,
    MAX_CONTEXTS,
    QR_MODELS,
    STORAGE_CLASSES,
    TRANSFER_SYNTAXES,
    VERIFICATION,
    association_count,
    plan_associations,
    probe_pairs,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
MWL_FIND = "1.2.840.10008.5.1.4.31"


def _probe(tmp_path: Path, toml: str) -> dict[str, Any]:
    config = write_config(tmp_path / "c.toml", toml)
    result = medimg("echo", "peer", "--probe", "--format", "json", config=config)
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def _accepted(doc: dict[str, Any]) -> dict[str, set[str]]:
    """abstract syntax -> the transfer syntaxes accepted for it."""
    return {row["abstract_syntax"]: {ts for ts, cell in row["transfer_syntaxes"].items()
                                     if cell["accepted"]}
            for row in doc["matrix"]}


def _results(doc: dict[str, Any], uid: str) -> dict[str, str]:
    (row,) = [r for r in doc["matrix"] if r["abstract_syntax"] == uid]
    return {ts: cell["result"] for ts, cell in row["transfer_syntaxes"].items()}


def test_one_context_per_pair_fits_in_two_associations() -> None:
    pairs = [(uid, ts) for uid, _, _, ts in probe_pairs()]
    assert len(pairs) == 2 + len(STORAGE_CLASSES) * len(TRANSFER_SYNTAXES) + len(QR_MODELS) * 3
    assert len(set(pairs)) == len(pairs) == 221
    plans = plan_associations(pairs)
    assert len(plans) == association_count(len(pairs)) == 2
    assert all(len(plan) <= MAX_CONTEXTS for plan in plans)
    assert all(plan[0] == (VERIFICATION, IMPLICIT) for plan in plans)  # the anchor
    assert {p for plan in plans for p in plan} == set(pairs)
    assert association_count(128) == 1 and association_count(129) == 2
    assert association_count(128 + 127) == 2 and association_count(128 + 128) == 3


def test_probe_of_orthanc_reports_its_transfer_syntaxes_services_and_roles(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    doc = _probe(tmp_path, orthanc.profile_toml("peer"))
    assert doc["associations"] == 2 and doc["proposed_contexts"] == 221
    assert doc["peer_ae"] == orthanc.aet
    assert doc["peer_max_pdu"] > 0
    assert doc["peer_implementation_class_uid"].startswith("1.2.276.0.7230010.3")  # DCMTK inside
    accepted = _accepted(doc)
    # Orthanc 1.10 accepts the classic compressed syntaxes, but not HTJ2K (newer than it).
    assert {IMPLICIT, EXPLICIT, JPEG_LOSSLESS_SV1, "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.5"} <= accepted[CT]
    assert HTJ2K_LOSSLESS not in accepted[CT]
    assert _results(doc, CT)[HTJ2K_LOSSLESS] != "accepted"
    assert {IMPLICIT, EXPLICIT} <= accepted[STUDY_FIND] and accepted[STUDY_GET]
    # No worklist plugin: the SOP class itself is refused.
    assert set(_results(doc, MWL_FIND).values()) == {"abstract syntax not supported"}
    roles = {r["sop_class"]: r for r in doc["role_selection"]}
    assert roles[CT]["answered"] and roles[CT]["scp_role"] and roles[CT]["c_get_possible"]


def test_probe_of_storescp_accepting_implicit_only(tmp_path: Path, fresh_peers: PeerPool) -> None:
    storescp = fresh_peers.storescp(extra_args=["+xi"])
    doc = _probe(tmp_path, storescp.profile_toml("peer"))
    accepted = _accepted(doc)
    for uid, _ in STORAGE_CLASSES:
        assert accepted[uid] == {IMPLICIT}, uid
        assert set(_results(doc, uid).values()) == {
            "accepted", "transfer syntaxes not supported"}
    for uid, _ in QR_MODELS:  # a storage SCP offers no query/retrieve
        assert accepted[uid] == set()
        assert set(_results(doc, uid).values()) == {"abstract syntax not supported"}
    assert not any(r["answered"] for r in doc["role_selection"])


ASSOCIATION_CONFIG = r"""
[[TransferSyntaxes]]
[ExplicitOnly]
TransferSyntax1 = LocalEndianExplicit
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[LosslessOrImplicit]
TransferSyntax1 = JPEGLossless:Non-hierarchical-1stOrderPrediction
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[CTandMR]
PresentationContext1 = VerificationSOPClass\Uncompressed
PresentationContext2 = CTImageStorage\LosslessOrImplicit
PresentationContext3 = MRImageStorage\ExplicitOnly

[[Profiles]]
[OnlyCTMR]
PresentationContexts = CTandMR
"""


def test_probe_of_storescp_restricted_by_association_profile(
    tmp_path: Path, fresh_peers: PeerPool
) -> None:
    cfg = tmp_path / "storescp.cfg"
    cfg.write_text(ASSOCIATION_CONFIG)
    storescp = fresh_peers.storescp(extra_args=["-xf", str(cfg), "OnlyCTMR"])
    doc = _probe(tmp_path, storescp.profile_toml("peer"))
    accepted = {uid: ts for uid, ts in _accepted(doc).items() if ts}
    assert accepted == {
        VERIFICATION: {IMPLICIT, EXPLICIT},
        CT: {JPEG_LOSSLESS_SV1, IMPLICIT},
        MR: {EXPLICIT},
    }
    # Every proposed context got an answer, also in the second association, where the
    # peer accepted only the Verification anchor.
    cells = [c for row in doc["matrix"] for c in row["transfer_syntaxes"].values()]
    assert len(cells) == 221
    assert "not answered" not in " ".join(c["result"] for c in cells)
    assert set(_results(doc, "1.2.840.10008.5.1.4.1.1.1").values()) == {
        "abstract syntax not supported"}  # CR, not in the profile


def test_probe_table_shows_matrix_legend_and_peer(tmp_path: Path, orthanc: Orthanc) -> None:
    config = write_config(tmp_path / "c.toml", orthanc.profile_toml("peer"))
    result = medimg("echo", "peer", "--probe", "--format", "table", config=config)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:3] == ["Impl", "Expl", "Defl"] for line in lines)
    (ct,) = [line for line in lines if line.startswith("CT Image Storage")]
    assert ct.split()[-9:-1] == ["yes"] * 8 and ct.split()[-1] != "yes"
    assert "max PDU" in result.stdout and "in 2 associations" in result.stdout
    assert "-ts transfer syntax not supported" in result.stdout
    assert "accepted for every storage class" in result.stdout


def test_probe_and_move_check_together_is_a_usage_error(tmp_path: Path, orthanc: Orthanc) -> None:
    config = write_config(tmp_path / "c.toml", orthanc.profile_toml("peer"))
    result = medimg("echo", "peer", "--probe", "--move-check", config=config)
    assert result.code == 2 and "separate diagnoses" in result.stderr


def test_probe_reads_answers_of_an_association_where_nothing_is_accepted(
    tmp_path: Path,
) -> None:
    from peers import free_port
    from pynetdicom import AE

    ae = AE(ae_title="ONLYCT")
    ae.add_supported_context(CT, [EXPLICIT])  # not even Verification: the anchor fails
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        doc = _probe(tmp_path, f'[profiles.peer]\ntype = "dimse"\nhost = "127.0.0.1"\n'
                               f'port = {port}\ncalled_aet = "ONLYCT"\ntimeout = 5\n')
    finally:
        server.shutdown()
    assert {uid: ts for uid, ts in _accepted(doc).items() if ts} == {CT: {EXPLICIT}}
    cells = [c for row in doc["matrix"] for c in row["transfer_syntaxes"].values()]
    assert len(cells) == 221 and all("not answered" not in c["result"] for c in cells)
    assert set(_results(doc, MWL_FIND).values()) == {"abstract syntax not supported"}


def test_probe_of_a_dicomweb_profile_is_a_usage_error(tmp_path: Path, orthanc: Orthanc) -> None:
    config = write_config(tmp_path / "c.toml", orthanc.dicomweb_profile_toml("web"))
    result = medimg("echo", "web", "--probe", config=config)
    assert result.code == 2 and "need a dimse profile" in result.stderr


def test_probe_of_a_peer_that_rejects_us_says_why(tmp_path: Path, dcmqrscp: Peer) -> None:
    config = write_config(tmp_path / "c.toml", dcmqrscp.profile_toml("peer", called_aet="WRONG"))
    result = medimg("echo", "peer", "--probe", config=config)
    assert result.code == 4
    assert "called AE title not recognised" in result.stderr and result.stdout == ""
