"""The OAuth 2 grants medimg speaks, and refresh and revocation.

- authorization-code: SMART App Launch (standalone) with PKCE S256, `state`
  checked, redirect to a loopback listener on 127.0.0.1 (RFC 8252).
- device: RFC 8628 device authorization grant, polling at the server's
  interval, slower on `slow_down`.
- client-credentials: client_secret_basic or client_secret_post.
- backend-services: client_credentials with a signed client assertion
  (RS384 / ES384, SMART Backend Services).

Nothing here prints: messages for the user go through the `say` callback.
Token values never reach a log line or an error message.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets as pysecrets
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medimg_cli.auth.settings import Endpoints, OAuthSettings, resolve_endpoints
from medimg_cli.auth.tokens import TokenSet
from medimg_cli.errors import ConnectError, RefusedError, RemoteError, UsageError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("medimg.auth")

Say = Callable[[str], None]
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class OAuthError(RefusedError):
    """The authorization server answered with an OAuth error (RFC 6749 5.2)."""

    def __init__(self, message: str, code: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code


# --------------------------------------------------------------------------
# Client authentication and token requests


def client_secret(settings: OAuthSettings) -> str:
    from medimg_cli.secrets import get_secret

    return get_secret(settings.profile, "client_secret", settings.client_secret_env,
                      "OAuth client secret")


def _client_auth(settings: OAuthSettings, audience: str, data: dict[str, str],
                 headers: dict[str, str]) -> None:
    """Add the client's authentication to a request to the token/revocation endpoint."""
    if settings.flow == "backend-services":
        from medimg_cli.auth import keys

        key = keys.load_private_key(settings.private_key_file)
        alg = keys.alg_for_key(key, settings.alg)
        kid = settings.key_id or keys.public_jwk(key, alg)["kid"]
        data["client_assertion_type"] = keys.ASSERTION_TYPE
        data["client_assertion"] = keys.client_assertion(settings.client_id, audience, key,
                                                         alg, kid)
        return
    if settings.uses_secret:
        secret = client_secret(settings)
        if settings.client_auth == "client_secret_post":
            data["client_id"] = settings.client_id
            data["client_secret"] = secret
        else:  # RFC 6749 2.3.1: form-encode both halves before Basic
            quote = urllib.parse.quote_plus
            pair = f"{quote(settings.client_id)}:{quote(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return
    data["client_id"] = settings.client_id


def _post_form(http: httpx.Client, url: str, data: dict[str, str], headers: dict[str, str],
               what: str) -> httpx.Response:
    import httpx

    started = time.perf_counter()
    try:
        response = http.post(url, data=data, headers=headers)
    except httpx.TimeoutException:
        raise ConnectError(f"{what}: no answer from {url} in time",
                           hint="check the OAuth endpoints; --timeout sets the limit") from None
    except httpx.TransportError as exc:
        raise ConnectError(f"{what}: cannot reach {url}: {type(exc).__name__}",
                           hint="check oauth.issuer / token_url and that the server runs"
                           ) from None
    # Only the method, URL, grant and status: bodies carry codes, secrets and tokens.
    log.debug("POST %s (%s) -> %s in %.3f s", url, data.get("grant_type") or what,
              response.status_code, time.perf_counter() - started)
    return response


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("error") or f"HTTP {response.status_code}")
    description = str(body.get("error_description") or "")[:200].replace("\n", " ")
    return code, description


def token_request(settings: OAuthSettings, http: httpx.Client, token_url: str,
                  data: dict[str, str], *, what: str) -> dict[str, Any]:
    """POST to the token endpoint; the JSON answer, or an OAuthError / RemoteError."""
    headers: dict[str, str] = {}
    _client_auth(settings, token_url, data, headers)
    response = _post_form(http, token_url, data, headers, what)
    if response.status_code == 200:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RemoteError(f"{what}: the token endpoint did not answer JSON",
                              hint="check oauth.token_url; rerun with -vv")
        return body
    code, description = _error_of(response)
    if response.status_code >= 500:
        raise RemoteError(f"{what}: the token endpoint failed: HTTP {response.status_code}")
    detail = f"{code}" + (f": {description}" if description else "")
    raise OAuthError(f"{what} refused by the authorization server ({detail})", code,
                     hint="check oauth.client_id, the client's credentials and the scopes")


def _token_set(settings: OAuthSettings, body: dict[str, Any], eps: Endpoints,
               previous: TokenSet | None = None) -> TokenSet:
    assert eps.token is not None
    return TokenSet.from_response(body, token_endpoint=eps.token, flow=settings.flow,
                                  client_id=settings.client_id,
                                  revocation_endpoint=eps.revoke, previous=previous)


def _resource(settings: OAuthSettings) -> dict[str, str]:
    """RFC 8707 resource indicator: the token's audience, when the profile names one."""
    return {"resource": settings.audience} if settings.audience else {}


# --------------------------------------------------------------------------
# Grants


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636."""
    verifier = pysecrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode("ascii")


def _has_gui() -> bool:
    """Whether a graphical browser can open: never start a console browser in our terminal."""
    import os
    import sys

    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def authorization_code(settings: OAuthSettings, http: httpx.Client, say: Say, *,
                       open_browser: bool, timeout: float) -> TokenSet:
    """SMART standalone launch: browser (or printed URL), PKCE, loopback redirect."""
    from medimg_cli.auth.loopback import LoopbackRedirect

    eps = resolve_endpoints(settings, http, need=("token", "authorize"))
    assert eps.authorize is not None and eps.token is not None
    verifier, challenge = pkce_pair()
    state = pysecrets.token_urlsafe(24)
    with LoopbackRedirect(settings.redirect_port) as listener:
        params = {
            "response_type": "code",
            "client_id": settings.client_id,
            "redirect_uri": listener.redirect_uri,
            "scope": settings.scope,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "aud": settings.audience or settings.url,  # SMART: the FHIR base URL
            **_resource(settings),
        }
        sep = "&" if "?" in eps.authorize else "?"
        url = eps.authorize + sep + urllib.parse.urlencode(params)
        opened = False
        if open_browser and _has_gui():
            import webbrowser

            try:
                opened = webbrowser.open(url)
            except Exception:  # no browser is not an error: the URL is printed
                opened = False
        if opened:
            say("Opened the login page in your browser. If it did not appear, open:")
        else:
            say("Open this URL in a browser to log in:")
        say(url)
        say(f"Waiting up to {timeout:.0f} s for the login to finish...")
        query = listener.wait(timeout, state=state)
    if query.get("iss") and settings.issuer and query["iss"].rstrip("/") != settings.issuer:
        raise RefusedError("the login answer came from another issuer (iss mismatch)",
                           hint="check oauth.issuer; do not reuse an old login page")
    body = token_request(settings, http, eps.token, {
        "grant_type": "authorization_code",
        "code": query["code"],
        "redirect_uri": listener.redirect_uri,
        "code_verifier": verifier,
        **_resource(settings),
    }, what="authorization code exchange")
    return _token_set(settings, body, eps)


def device(settings: OAuthSettings, http: httpx.Client, say: Say, *, timeout: float,
           sleep: Callable[[float], None] = time.sleep) -> TokenSet:
    """RFC 8628: show the code and URL, then poll at the server's interval."""
    eps = resolve_endpoints(settings, http, need=("token", "device"))
    assert eps.device is not None and eps.token is not None
    data = {"scope": settings.scope, **_resource(settings)}
    headers: dict[str, str] = {}
    _client_auth(settings, eps.device, data, headers)
    response = _post_form(http, eps.device, data, headers, "device authorization")
    if response.status_code != 200:
        code, description = _error_of(response)
        raise OAuthError(f"device authorization refused ({code}"
                         + (f": {description})" if description else ")"), code,
                         hint="check oauth.client_id and that the client may use the device flow")
    answer = response.json()
    device_code = str(answer["device_code"])
    interval = float(answer.get("interval") or 5)
    expires_in = float(answer.get("expires_in") or timeout)
    say(f"To log in, open {answer.get('verification_uri')} and enter the code "
        f"{answer.get('user_code')}")
    if answer.get("verification_uri_complete"):
        say(f"(or open {answer['verification_uri_complete']})")
    say(f"Waiting up to {min(timeout, expires_in):.0f} s for the login to finish...")
    deadline = time.monotonic() + min(timeout, expires_in)
    while True:
        sleep(interval)
        if time.monotonic() > deadline:
            raise RefusedError("the device login was not completed in time",
                               hint=f"run `medimg login {settings.profile}` again")
        try:
            body = token_request(settings, http, eps.token, {
                "grant_type": DEVICE_GRANT, "device_code": device_code, **_resource(settings),
            }, what="device login")
        except OAuthError as exc:
            if exc.code == "authorization_pending":
                continue
            if exc.code == "slow_down":
                interval += 5  # RFC 8628 3.5
                log.debug("device login: slow_down, polling every %.0f s now", interval)
                continue
            if exc.code == "expired_token":
                raise RefusedError("the device code expired before the login finished",
                                   hint=f"run `medimg login {settings.profile}` again") from None
            if exc.code == "access_denied":
                raise RefusedError("the login was denied at the authorization server",
                                   hint=f"run `medimg login {settings.profile}` again") from None
            raise
        return _token_set(settings, body, eps)


def client_credentials(settings: OAuthSettings, http: httpx.Client) -> TokenSet:
    """client_credentials with a client secret, or a signed assertion (Backend Services)."""
    eps = resolve_endpoints(settings, http, need=("token",))
    assert eps.token is not None
    what = "backend services token request" if settings.flow == "backend-services" else (
        "client credentials token request")
    body = token_request(settings, http, eps.token, {
        "grant_type": "client_credentials", "scope": settings.scope, **_resource(settings),
    }, what=what)
    return _token_set(settings, body, eps)


def login(settings: OAuthSettings, http: httpx.Client, say: Say, *, open_browser: bool = True,
          timeout: float = 300.0) -> TokenSet:
    """Run the profile's flow and return the new token set."""
    if settings.flow == "authorization-code":
        return authorization_code(settings, http, say, open_browser=open_browser,
                                  timeout=timeout)
    if settings.flow == "device":
        return device(settings, http, say, timeout=timeout)
    if settings.flow in ("client-credentials", "backend-services"):
        return client_credentials(settings, http)
    raise UsageError(f"unknown oauth.flow {settings.flow!r}")


def refresh(settings: OAuthSettings, http: httpx.Client, tokens: TokenSet) -> TokenSet:
    """A fresh token set: the refresh grant, or a new client-credentials grant.

    A rotated refresh token replaces the old one; a refused refresh says to
    log in again (exit 4).
    """
    if not tokens.refresh_token:
        if settings.flow in ("client-credentials", "backend-services"):
            return client_credentials(settings, http)
        raise RefusedError(
            f"the login of profile '{settings.profile}' has expired (no refresh token)",
            hint=f"run `medimg login {settings.profile}`")
    eps = Endpoints(token=tokens.token_endpoint, revoke=tokens.revocation_endpoint)
    try:
        body = token_request(settings, http, tokens.token_endpoint, {
            "grant_type": "refresh_token", "refresh_token": tokens.refresh_token,
        }, what="token refresh")
    except OAuthError as exc:
        raise RefusedError(
            f"the login of profile '{settings.profile}' has expired or was revoked "
            f"(refresh refused: {exc.code})",
            hint=f"run `medimg login {settings.profile}`",
        ) from None
    log.info("refreshed the access token of profile '%s'", settings.profile)
    return _token_set(settings, body, eps, previous=tokens)


def revoke(settings: OAuthSettings, http: httpx.Client, url: str, token: str,
           hint: str, audience: str) -> bool:
    """RFC 7009 revocation; True when the server accepted it.

    `audience` is the token endpoint: the `aud` of a Backend Services assertion.
    """
    data = {"token": token, "token_type_hint": hint}
    headers: dict[str, str] = {}
    try:
        _client_auth(settings, audience, data, headers)
    except RefusedError as exc:  # no client secret any more: still log out locally
        log.warning("cannot revoke at the server: %s", exc.message)
        return False
    response = _post_form(http, url, data, headers, "revocation")
    if response.status_code == 200:
        return True
    code, _ = _error_of(response)
    # unsupported_token_type: a self-contained (JWT) access token, which simply expires.
    level = logging.INFO if code == "unsupported_token_type" else logging.WARNING
    log.log(level, "the server did not revoke the %s (%s)", hint.replace("_", " "), code)
    return False
