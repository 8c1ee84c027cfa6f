"""A-ASSOCIATE User Identity negotiation (PS3.7 D.3.3.7), as DCMTK storescu offers it.

Profile keys (dimse profiles):

    user_identity = "username" | "username-passcode" | "jwt" | "saml"
    username = "svc-medimg"              # username, username-passcode
    passcode_env = "PACS_PASSCODE"       # else the keyring entry PROFILE:passcode
    identity_token_env = "PACS_JWT"      # jwt / saml: the token or assertion ...
    identity_file = "~/pacs-saml.xml"    # ... or a file that holds it
    identity_response = true             # ask for a positive response

Secrets (passcode, JWT, SAML assertion) never come from the command line
and never appear in a message, a repr or a -vv log: pynetdicom's own
A-ASSOCIATE-RQ dump prints the passcode, so a log filter blanks it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_cli.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from medimg_cli.config import Profile

# User-Identity-Type (PS3.8 Table 9-15 / PS3.7 D.3.3.7): Kerberos (3) is not offered.
KINDS = {"username": 1, "username-passcode": 2, "saml": 4, "jwt": 5}
_NAMES = {1: "username", 2: "username and passcode", 4: "SAML assertion", 5: "JSON Web Token"}


@dataclass(frozen=True)
class UserIdentity:
    """What we send; `primary`/`secondary` hold secrets and stay out of repr."""

    kind: str
    username: str = ""
    primary: bytes = field(default=b"", repr=False)
    secondary: bytes = field(default=b"", repr=False)
    response_requested: bool = False

    @property
    def type_code(self) -> int:
        return KINDS[self.kind]

    def describe(self) -> str:
        """For messages: the kind and the username, never a secret."""
        who = f" '{self.username}'" if self.username else ""
        return f"{_NAMES[self.type_code]}{who}"

    def negotiation_item(self) -> Any:
        """pynetdicom's UserIdentityNegotiation item for the A-ASSOCIATE-RQ."""
        from pynetdicom.pdu_primitives import UserIdentityNegotiation

        install_log_redaction()
        item = UserIdentityNegotiation()
        item.user_identity_type = self.type_code
        item.positive_response_requested = self.response_requested
        item.primary_field = self.primary
        if self.type_code == 2:
            item.secondary_field = self.secondary
        return item


@dataclass(frozen=True)
class IdentityAnswer:
    """What the acceptor answered: whether a positive response came, and its size."""

    requested: bool
    positive: bool
    response_length: int = 0

    def describe(self, identity: UserIdentity) -> str:
        if self.positive:
            size = f" ({self.response_length} bytes)" if self.response_length else ""
            return f"accepted {identity.describe()}: positive response{size}"
        if self.requested:
            return (f"association accepted with {identity.describe()}, but the peer sent no "
                    "positive response (it may not check user identity at all)")
        return f"association accepted with {identity.describe()} (no response requested)"

    def as_dict(self, identity: UserIdentity) -> dict[str, Any]:
        return {"sent": identity.describe(), "response_requested": self.requested,
                "positive_response": self.positive, "summary": self.describe(identity)}


def answer_of(assoc: Any, identity: UserIdentity) -> IdentityAnswer:
    """Read the User Identity response from an established association's A-ASSOCIATE-AC."""
    from pynetdicom.pdu_primitives import UserIdentityNegotiation

    for item in assoc.acceptor.user_information:
        if isinstance(item, UserIdentityNegotiation):
            response = item.server_response or b""
            return IdentityAnswer(identity.response_requested, True, len(response))
    return IdentityAnswer(identity.response_requested, False)


def from_profile(profile: Profile, *, kind: str | None = None, username: str | None = None,
                 response: bool | None = None) -> UserIdentity | None:
    """The profile's user identity (options override its keys), or None when not set."""
    kind = kind or profile.get("user_identity")
    if not kind:
        if username is not None:
            raise UsageError("--username needs a user identity: --user-identity KIND or "
                             "user_identity in the profile")
        return None
    if kind not in KINDS:
        raise UsageError(f"--user-identity '{kind}': expected one of {', '.join(KINDS)}")
    requested = bool(profile.get("identity_response", False) if response is None else response)
    if kind in ("username", "username-passcode"):
        name = username or profile.get("username")
        if not name:
            raise ConfigError(
                f"profile '{profile.name}': user_identity = \"{kind}\" needs a username",
                hint="add username = \"...\" to the profile, or give --username")
        passcode = b""
        if kind == "username-passcode":
            from medimg_cli.secrets import get_secret

            env = profile.get("passcode_env") or profile.get("password_env")
            passcode = get_secret(profile.name, "passcode", env,
                                  "DICOM user identity passcode").encode("utf-8")
        return UserIdentity(kind, str(name), str(name).encode("utf-8"), passcode, requested)
    return UserIdentity(kind, "", _token(profile, kind), b"", requested)


def _token(profile: Profile, kind: str) -> bytes:
    """A JWT or SAML assertion: from identity_token_env, identity_file, or the keyring."""
    import os

    what = "JSON Web Token" if kind == "jwt" else "SAML assertion"
    env = profile.get("identity_token_env")
    if env and os.environ.get(env):
        return os.environ[env].strip().encode("utf-8")
    path = profile.get("identity_file")
    if path:
        try:
            return Path(str(path)).expanduser().read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"profile '{profile.name}': cannot read identity_file {path}: "
                f"{exc.strerror or exc}",
                hint=f"identity_file names the file that holds the {what}") from None
    from medimg_cli.secrets import get_secret

    return get_secret(profile.name, "identity_token", env, what).encode("utf-8")


# ---------------------------------------------------------------------------
# pynetdicom logs the A-ASSOCIATE-RQ with "Password: [<passcode>]" at debug level.

_PASSWORD = re.compile(r"(Password: )\[[^\]\n]*\]")
_installed = False


class _RedactPasscode(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Password: [" in message:
            record.msg = _PASSWORD.sub(r"\1<secret>", message)
            record.args = None
        return True


def install_log_redaction() -> None:
    """Blank the passcode in pynetdicom's association dump (idempotent)."""
    global _installed
    if not _installed:
        logging.getLogger("pynetdicom._handlers").addFilter(_RedactPasscode())
        _installed = True


def rejected(identity: UserIdentity, meaning: str, profile: str) -> tuple[str, str]:
    """The A-ASSOCIATE-RJ diagnosis when we sent a user identity: most likely the credentials."""
    if identity.type_code == 2:
        check = (f"check the username and the passcode (keyring entry '{profile}:passcode', "
                 "or the variable named by passcode_env)")
    elif identity.type_code == 1:
        check = "check the username"
    else:
        check = ("check that the token or assertion is current and meant for this PACS "
                 "(identity_token_env / identity_file)")
    return (f"{meaning}; we sent a user identity ({identity.describe()}) and the PACS "
            "may have refused it",
            f"{check}; the PACS's log says whether it refused the identity or the AE title")
