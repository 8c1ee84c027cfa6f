"""The OAuth token set of a profile, kept as ONE keyring entry (`PROFILE:oauth`).

It holds what a later process needs to use and renew the login without the
config or a discovery round trip: the access token, the refresh token, the
expiry, the scopes, the token and revocation endpoints, and the flow and
client id it was obtained with.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from medimg_cli.errors import RefusedError

KIND = "oauth"


@dataclass
class TokenSet:
    """Tokens from a token endpoint answer, plus where they came from."""

    access_token: str
    token_endpoint: str
    flow: str
    client_id: str
    token_type: str = "Bearer"
    refresh_token: str | None = None
    expires_at: float | None = None
    obtained_at: float = field(default_factory=time.time)
    scope: str = ""
    revocation_endpoint: str | None = None
    patient: str | None = None  # SMART launch context (scope launch/patient)

    def __repr__(self) -> str:  # never show the tokens, even in a debugger or a traceback
        return (f"TokenSet(flow={self.flow!r}, client_id={self.client_id!r}, "
                f"expires_at={self.expires_at!r}, scope={self.scope!r})")

    @classmethod
    def from_response(cls, body: dict[str, Any], *, token_endpoint: str, flow: str,
                      client_id: str, revocation_endpoint: str | None,
                      previous: TokenSet | None = None) -> TokenSet:
        """A token set from a token endpoint's JSON answer (RFC 6749 5.1)."""
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise RefusedError("the token endpoint answered without an access_token",
                               hint="rerun with -vv and check the OAuth client's settings")
        now = time.time()
        expires_in = body.get("expires_in")
        expires_at = now + float(expires_in) if isinstance(expires_in, (int, float)) else None
        refresh = body.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            # No new refresh token: the old one stays valid (no rotation).
            refresh = previous.refresh_token if previous else None
        scope = body.get("scope")
        if not isinstance(scope, str):
            scope = previous.scope if previous else ""
        return cls(
            access_token=access,
            token_endpoint=token_endpoint,
            flow=flow,
            client_id=client_id,
            token_type=str(body.get("token_type") or "Bearer"),
            refresh_token=refresh,
            expires_at=expires_at,
            obtained_at=now,
            scope=scope,
            revocation_endpoint=revocation_endpoint,
            patient=(str(body["patient"]) if body.get("patient")
                     else previous.patient if previous else None),
        )

    @property
    def lifetime(self) -> float | None:
        return None if self.expires_at is None else self.expires_at - self.obtained_at

    def seconds_left(self, now: float | None = None) -> float | None:
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def needs_refresh(self, now: float | None = None) -> bool:
        """True shortly before expiry: a quarter of the lifetime, at most 60 s, ahead."""
        left = self.seconds_left(now)
        if left is None:
            return False
        lifetime = self.lifetime or 0.0
        margin = min(60.0, max(1.0, lifetime * 0.25))
        return left <= margin

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TokenSet | None:
        """Parse a stored entry; None when it is not a token set (then treat as logged out)."""
        try:
            data = json.loads(text)
            names = cls.__dataclass_fields__
            return cls(**{k: v for k, v in data.items() if k in names})
        except (ValueError, TypeError):
            return None

    def status(self, now: float | None = None) -> dict[str, Any]:
        """What `medimg token` shows: everything but the tokens themselves."""
        left = self.seconds_left(now)
        return {
            "logged_in": True,
            "flow": self.flow,
            "client_id": self.client_id,
            "token_type": self.token_type,
            "expires_at": (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at))
                           if self.expires_at is not None else None),
            "expires_in": None if left is None else int(left),
            "expired": left is not None and left <= 0,
            "scope": self.scope,
            "refresh_token": self.refresh_token is not None,
            "token_endpoint": self.token_endpoint,
            "revocation_endpoint": self.revocation_endpoint,
            "patient": self.patient,
        }
