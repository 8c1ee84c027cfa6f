"""A profile's OAuth login as used by commands: the stored token set, kept fresh.

`OAuthSession(profile)` reads the token set from the keyring, refreshes it
shortly before expiry (and once on a 401, through `OAuthAuth`), and writes
the renewed set back, so a rotated refresh token replaces the old one.

Client-credentials and Backend Services profiles need no interactive login:
when nothing is stored (or no keyring exists, as on headless hosts with
`oauth.client_secret_env`), a token is fetched and, where a keyring exists,
cached.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from medimg_cli.auth import flows
from medimg_cli.auth.settings import OAuthSettings, http_client, resolve_endpoints, settings_for
from medimg_cli.auth.tokens import KIND, TokenSet
from medimg_cli.errors import RefusedError
from medimg_cli.secrets import (
    NoKeyringBackend,
    keyring_delete,
    keyring_read,
    keyring_set,
)

if TYPE_CHECKING:
    from medimg_cli.config import Profile

log = logging.getLogger("medimg.auth")


def load_tokens(profile: str) -> TokenSet | None:
    """The stored token set of a profile, or None."""
    text = keyring_read(profile, KIND)
    return TokenSet.from_json(text) if text else None


def save_tokens(profile: str, tokens: TokenSet) -> None:
    keyring_set(profile, KIND, tokens.to_json(), "OAuth tokens")


class OAuthSession:
    """The access token of one profile, refreshed when needed."""

    def __init__(self, profile: Profile, *, settings: OAuthSettings | None = None) -> None:
        self.profile = profile
        self.settings = settings or settings_for(profile)
        self._tokens: TokenSet | None = None
        self._loaded = False
        self._keyring = True
        self._http: httpx.Client | None = None
        self.refreshes = 0

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = http_client(self.settings)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> OAuthSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the token set

    def tokens(self) -> TokenSet:
        """The current token set (not refreshed); log in by itself where no user is needed."""
        if not self._loaded:
            self._loaded = True
            try:
                self._tokens = load_tokens(self.settings.profile)
            except NoKeyringBackend as exc:
                self._keyring = False
                if self.settings.interactive:
                    raise NoKeyringBackend(
                        f"profile '{self.settings.profile}' needs an OAuth login, and "
                        f"{exc.message}",
                        hint="install a keyring backend such as the Secret Service "
                        f"(gnome-keyring) and run `medimg login {self.settings.profile}`, or "
                        "on a headless host use token_env, or oauth.flow = "
                        "\"client-credentials\" with oauth.client_secret_env",
                    ) from None
        if self._tokens is None or self._tokens.client_id != self.settings.client_id:
            if self.settings.interactive:
                raise RefusedError(f"not logged in to profile '{self.settings.profile}'",
                                   hint=f"run `medimg login {self.settings.profile}`")
            self._store(flows.client_credentials(self.settings, self.http))
        assert self._tokens is not None
        return self._tokens

    def _store(self, tokens: TokenSet) -> None:
        self._tokens = tokens
        if self._keyring:
            try:
                save_tokens(self.settings.profile, tokens)
            except NoKeyringBackend:
                self._keyring = False  # headless: keep the token for this process only
                log.debug("no keyring backend: the token of profile '%s' is not cached",
                          self.settings.profile)

    def refresh(self) -> TokenSet:
        """Renew now (refresh grant, or a new client-credentials grant) and store.

        Serialised across processes per profile: a refresh token that rotates can
        be used once, so a second process waits, then takes what the first stored.
        """
        with _refresh_lock(self.settings.profile) if self._keyring else contextlib.nullcontext():
            return self._refresh_locked()

    def _refresh_locked(self) -> TokenSet:
        current = self.tokens()
        if self._keyring:
            try:
                latest = load_tokens(self.settings.profile)
            except RefusedError:
                latest = None
            if latest is not None and latest.access_token != current.access_token:
                self._tokens = current = latest  # another process renewed it meanwhile
                if not latest.needs_refresh():
                    log.debug("using the token another medimg process just renewed")
                    return latest
        try:
            renewed = flows.refresh(self.settings, self.http, current)
        except RefusedError:
            if current.refresh_token and self._keyring:
                # The refresh token is dead: forget it, so `token` says "not logged in".
                with contextlib.suppress(RefusedError):
                    keyring_delete(self.settings.profile, KIND)
            raise
        self.refreshes += 1
        self._store(renewed)
        return renewed

    def access_token(self) -> str:
        """A usable access token: refreshed first when it is about to expire."""
        tokens = self.tokens()
        if tokens.needs_refresh():
            tokens = self.refresh()
        return tokens.access_token

    # -- logout

    def logout(self) -> tuple[bool, bool]:
        """Revoke at the server where possible and remove the entries.

        Returns (was logged in, revoked at the server).
        """
        try:
            tokens = load_tokens(self.settings.profile)
        except NoKeyringBackend:
            raise
        revoked = False
        if tokens is not None:
            url = tokens.revocation_endpoint or self.settings.endpoints.revoke
            if url is None:
                try:
                    url = resolve_endpoints(self.settings, self.http, need=("revoke",)).revoke
                except RefusedError:
                    url = None
                except Exception:  # discovery is best effort at logout
                    url = None
            if url:
                audience = tokens.token_endpoint
                for value, hint in ((tokens.refresh_token, "refresh_token"),
                                    (tokens.access_token, "access_token")):
                    if value:
                        try:
                            ok = flows.revoke(self.settings, self.http, url, value, hint,
                                              audience)
                        except RefusedError as exc:
                            log.warning("revocation failed: %s", exc.message)
                            ok = False
                        revoked = revoked or ok
        removed = tokens is not None
        for kind in (KIND, "client_secret"):
            removed = keyring_delete(self.settings.profile, kind) or removed
        return removed, revoked


@contextlib.contextmanager
def _refresh_lock(profile: str) -> Iterator[None]:
    """An exclusive per-profile lock file (POSIX flock; a no-op where flock is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    import platformdirs

    directory = Path(platformdirs.user_cache_dir("medimg")) / "locks"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / f"{profile}.lock", "a")  # noqa: SIM115 - closed below
    except OSError:
        yield  # no cache dir (read-only home): refresh unserialised
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()


class OAuthAuth(httpx.Auth):
    """httpx authentication for `auth = "oauth"`: bearer token, refresh, one retry on 401."""

    def __init__(self, session: OAuthSession) -> None:
        self.session = session

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.session.access_token()}"
        response = yield request
        if response.status_code == 401:
            log.info("HTTP 401 with the current access token: refreshing once and retrying")
            tokens = self.session.refresh()
            request.headers["Authorization"] = f"Bearer {tokens.access_token}"
            yield request


class StaticBearer(httpx.Auth):
    """A bearer token from the environment variable the profile names (`token_env`)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def auth_for(profile: Profile) -> httpx.Auth:
    """The httpx auth of an `auth = "oauth"` profile (token_env wins when it is set)."""
    env = profile.get("token_env")
    if env and os.environ.get(str(env)):
        return StaticBearer(os.environ[str(env)])
    return OAuthAuth(OAuthSession(profile))
