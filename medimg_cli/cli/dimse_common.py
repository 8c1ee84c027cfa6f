"""What the DIMSE commands share: the Target from a profile, the association report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medimg_cli.config import ae_title
from medimg_cli.errors import UsageError

if TYPE_CHECKING:
    from medimg_cli.cli.runtime import Runtime
    from medimg_cli.config import Profile
    from medimg_cli.dimse.association import AssociationReport, Target
    from medimg_cli.dimse.tls import TlsSettings


def dimse_target(
    profile: Profile,
    *,
    calling_aet: str | None = None,
    called_aet: str | None = None,
    timeout: float | None = None,
) -> Target:
    """The Target for `profile`, with --aet, --aec and --timeout applied."""
    from medimg_cli.dimse.association import Target

    def aet(value: str | None, option: str, fallback: str) -> str:
        if value is None:
            return fallback
        try:
            return ae_title(value)
        except ValueError as exc:
            raise UsageError(f"{option} '{value}': expected {exc}") from None

    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout {timeout:g}: expected a number of seconds greater than 0")
    return Target(
        host=profile.host,
        port=profile.port,
        called_aet=aet(called_aet, "--aec", profile.called_aet),
        calling_aet=aet(calling_aet, "--aet", profile.calling_aet),
        timeout=timeout if timeout is not None else profile.timeout,
        max_pdu=int(profile.get("max_pdu", 0)),
        profile=profile.name,
        tls=tls_settings(profile) if profile.get("tls", False) else None,
    )


def tls_settings(profile: Profile) -> TlsSettings:
    """The profile's TLS keys (for `tls = true`, and for `receive_tls = true`)."""
    from medimg_cli.dimse.tls import TlsSettings

    return TlsSettings(
        ca_file=profile.get("ca_file"),
        cert_file=profile.get("cert_file"),
        key_file=profile.get("key_file"),
        verify=bool(profile.get("tls_verify", True)),
        min_version=profile.get("tls_min_version"),
        profile=profile.name,
    )


def show_association_report(
    rt: Runtime, report: AssociationReport, calling: str, peer: str
) -> None:
    """With -v: what the peer answered in its A-ASSOCIATE-AC, on stderr."""
    from pydicom.uid import UID

    if rt.verbose < 1:
        return
    rt.detail(f"association {calling} -> {peer} accepted in {report.seconds * 1000:.1f} ms")
    version = report.peer_implementation_version
    rt.detail(
        f"  peer implementation class UID: {report.peer_implementation_uid}"
        + (f", version name: {version}" if version else "")
    )
    pdu = report.peer_max_pdu
    rt.detail(f"  peer max PDU: {pdu if pdu else 'unlimited'}")
    for cx in report.contexts:
        state = "accepted" if cx.accepted else f"rejected ({cx.result})"
        syntaxes = ", ".join(str(UID(ts).name) for ts in cx.transfer_syntaxes)
        rt.detail(f"  context {cx.name}: {state}" + (f", {syntaxes}" if syntaxes else ""))
