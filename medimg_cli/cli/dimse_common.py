"""What the DIMSE commands share: the Target from a profile, the association report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from medimg_cli.config import ae_title
from medimg_cli.errors import UsageError

if TYPE_CHECKING:
    from medimg_cli.cli.runtime import Runtime
    from medimg_cli.config import Profile
    from medimg_cli.dimse.association import AssociationReport, Target
    from medimg_cli.dimse.tls import TlsSettings
    from medimg_cli.dimse.user_identity import UserIdentity


def dimse_target(
    profile: Profile,
    *,
    calling_aet: str | None = None,
    called_aet: str | None = None,
    timeout: float | None = None,
    user_identity: UserIdentity | None = None,
) -> Target:
    """The Target for `profile`, with --aet, --aec and --timeout applied.

    `user_identity` overrides the profile's (user_identity keys) when given.
    """
    from medimg_cli.dimse.association import Target

    if user_identity is None and profile.get("user_identity"):
        from medimg_cli.dimse.user_identity import from_profile

        user_identity = from_profile(profile)

    def aet(value: str | None, option: str, fallback: str) -> str:
        if value is None:
            return fallback
        try:
            return ae_title(value)
        except ValueError as exc:
            raise UsageError(f"{option} '{value}': expected {exc}") from None

    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout {timeout:g}: expected a number of seconds greater than 0")
    unused = [key for key in ("ca_file", "cert_file", "key_file", "tls_verify", "tls_min_version")
              if profile.get(key) is not None]
    if unused and not profile.get("tls", False) and not profile.get("receive_tls", False):
        import logging

        logging.getLogger("medimg").warning(
            "profile '%s' sets %s but not tls = true: the association is plain DICOM (set "
            "tls = true for DICOM TLS)", profile.name, ", ".join(unused))
    unused = [key for key in ("username", "passcode_env", "password_env", "identity_token_env",
                              "identity_file", "identity_response")
              if profile.get(key) is not None]
    if unused and user_identity is None:
        import logging

        logging.getLogger("medimg").warning(
            "profile '%s' sets %s but no user_identity: the association carries no user "
            "identity (set user_identity = \"username-passcode\", \"jwt\", ...)",
            profile.name, ", ".join(unused))
    return Target(
        host=profile.host,
        port=profile.port,
        called_aet=aet(called_aet, "--aec", profile.called_aet),
        calling_aet=aet(calling_aet, "--aet", profile.calling_aet),
        timeout=timeout if timeout is not None else profile.timeout,
        max_pdu=int(profile.get("max_pdu", 0)),
        profile=profile.name,
        tls=tls_settings(profile) if profile.get("tls", False) else None,
        user_identity=user_identity,
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
    if report.user_identity:
        rt.detail(f"  user identity: {report.user_identity['summary']}")
    for cx in report.contexts:
        state = "accepted" if cx.accepted else f"rejected ({cx.result})"
        syntaxes = ", ".join(str(UID(ts).name) for ts in cx.transfer_syntaxes)
        rt.detail(f"  context {cx.name}: {state}" + (f", {syntaxes}" if syntaxes else ""))


# User Identity options (the secret itself is never an option: keyring or *_env).
UserIdentityOpt = Annotated[
    str | None,
    typer.Option("--user-identity", metavar="KIND",
                 help="A-ASSOCIATE user identity: username | username-passcode | jwt | saml "
                 "(overrides the profile's user_identity). The passcode or token comes from "
                 "the keyring or the profile's passcode_env / identity_token_env.",
                 show_default=False),
]
UsernameOpt = Annotated[
    str | None,
    typer.Option("--username", metavar="NAME",
                 help="Username for --user-identity (overrides the profile's username).",
                 show_default=False),
]
IdentityResponseOpt = Annotated[
    bool | None,
    typer.Option("--identity-response/--no-identity-response",
                 help="Ask the peer for a positive User Identity response.",
                 show_default=False),
]


def identity_options(profile: Profile, kind: str | None, username: str | None,
                     response: bool | None) -> UserIdentity | None:
    """The user identity from options over profile keys; None: let the profile decide."""
    if kind is None and username is None and response is None:
        return None
    from medimg_cli.dimse.user_identity import from_profile

    return from_profile(profile, kind=kind, username=username, response=response)


def show_identity_answer(rt: Runtime, fmt: str, report: AssociationReport) -> None:
    """Whether the peer confirmed our user identity: a result line in table format."""
    answer = report.user_identity
    if not answer:
        return
    if fmt == "table":
        rt.stdout.write(f"user identity: {answer['summary']}\n")
    elif fmt == "jsonl":
        rt.info(f"user identity: {answer['summary']}")
