"""The HTTP layer shared by DICOMweb (and later FHIR): one httpx client per profile.

`open_client(profile)` applies the profile's base URL, timeouts, TLS settings
and authentication; `request()` retries idempotent requests on connection
errors, 429 and 503 (honouring Retry-After, bounded) and turns httpx errors
and HTTP failures into medimg errors. `-vv` logs method, URL, status and
timing, with credentials redacted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from medimg_cli.errors import ConfigError, ConnectError, RefusedError, RemoteError, UsageError

if TYPE_CHECKING:
    import httpx

    from medimg_cli.config import Profile

log = logging.getLogger("medimg.http")

RETRY_STATUSES = (429, 503)
MAX_RETRIES = 3
MAX_RETRY_WAIT = 30.0
_SENSITIVE_HEADERS = {"authorization", "cookie", "set-cookie", "x-api-key", "proxy-authorization"}


def redact_headers(headers: Mapping[str, str], extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Headers safe to log: credentials replaced by `<redacted>`."""
    hidden = _SENSITIVE_HEADERS | {h.lower() for h in extra}
    return {k: ("<redacted>" if k.lower() in hidden else v) for k, v in headers.items()}


def _auth_headers(profile: Profile) -> tuple[dict[str, str], Any]:
    """(headers, httpx auth) for the profile's `auth` setting."""
    import httpx

    from medimg_cli.secrets import get_secret

    kind = profile.get("auth", "none")
    if kind == "none":
        return {}, None
    if kind == "basic":
        username = profile.get("username")
        if not username:
            raise UsageError(f"profile '{profile.name}' has auth = \"basic\" but no username",
                             hint="add username = \"...\" to the profile")
        password = get_secret(profile.name, "password", profile.get("password_env"), "password")
        return {}, httpx.BasicAuth(str(username), password)
    if kind == "bearer":
        token = get_secret(profile.name, "token", profile.get("token_env"), "bearer token")
        return {"Authorization": f"Bearer {token}"}, None
    if kind == "api-key":
        key = get_secret(profile.name, "api_key", profile.get("api_key_env"), "API key")
        return {str(profile.get("api_key_header", "X-Api-Key")): key}, None
    if kind == "oauth":
        from medimg_cli.auth.session import auth_for

        return {}, auth_for(profile)
    raise UsageError(
        f"profile '{profile.name}': auth = \"{kind}\" is not available in this version",
        hint="use none, basic, bearer or api-key",
    )


def tls_for(profile: Profile) -> tuple[Any, Any]:
    """httpx's `verify` and `cert` for an HTTP profile, the files checked first: a missing,
    unreadable or wrong ca_file, cert_file or key_file is one clear line (exit 2)."""
    import ssl
    from pathlib import Path

    def path_of(key: str) -> str | None:
        value = profile.get(key)
        if not value:
            return None
        path = Path(str(value)).expanduser()
        if not path.is_file():
            raise ConfigError(f"profile '{profile.name}': {key} {path} does not exist or is "
                              "not a file", hint=f"check {key} in profile '{profile.name}'")
        return str(path)

    ca, cert, key = path_of("ca_file"), path_of("cert_file"), path_of("key_file")
    verify: Any = True
    if ca and profile.get("verify") is not False:
        try:
            verify = ssl.create_default_context(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"profile '{profile.name}': ca_file {ca} holds no usable "
                              f"certificate: {getattr(exc, 'reason', None) or exc}",
                              hint="ca_file must be a PEM file with the CA certificate(s)"
                              ) from None
    if profile.get("verify") is False:
        verify = False
    if key and not cert:
        raise ConfigError(f"profile '{profile.name}': key_file without cert_file",
                          hint="set cert_file to the certificate that goes with the key")
    if not cert:
        return verify, None

    def no_password() -> str:
        raise ConfigError(f"profile '{profile.name}': key_file {key or cert} is encrypted",
                          hint="medimg needs an unencrypted private key file readable only "
                          "by you (e.g. `openssl pkey -in KEY -out KEY.plain`, chmod 600)")

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=no_password)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"profile '{profile.name}': cannot use cert_file {cert} with key_file "
                          f"{key or '(in cert_file)'}: {getattr(exc, 'reason', None) or exc}",
                          hint="the key must be the certificate's private key, both in PEM "
                          "format") from None
    return verify, ((cert, key) if key else cert)


@contextmanager
def open_client(profile: Profile, *, timeout: float | None = None) -> Iterator[httpx.Client]:
    """An httpx client for the profile: base URL, timeouts, TLS, authentication."""
    import httpx

    from medimg_cli.dicomweb.tracing import event_hooks as trace_hooks

    verify, cert = tls_for(profile)
    headers, auth = _auth_headers(profile)
    if profile.get("verify") is False:
        log.warning("TLS certificate verification is OFF for profile '%s'", profile.name)
    limit = timeout if timeout is not None else profile.timeout
    client = httpx.Client(
        base_url=str(profile.get("url")).rstrip("/") + "/",
        headers={"User-Agent": f"medimg/{_version()}", **headers},
        auth=auth,
        verify=verify,
        cert=cert,
        timeout=httpx.Timeout(limit),
        follow_redirects=True,
        trust_env=True,
        event_hooks=trace_hooks(),
    )
    client.medimg_secret_headers = tuple(headers)  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        client.close()
        close_auth = getattr(getattr(auth, "session", None), "close", None)
        if callable(close_auth):
            close_auth()


def _version() -> str:
    from medimg_cli import __version__

    return __version__


def _retry_after(response: httpx.Response, attempt: int) -> float:
    value = response.headers.get("Retry-After", "")
    if value.isdigit():
        return float(min(float(value), MAX_RETRY_WAIT))
    return float(min(0.5 * 2**attempt, MAX_RETRY_WAIT))


def check_response(response: httpx.Response, what: str) -> None:
    """HTTP failures as medimg errors: 401/403 refused (4), others remote failures (5)."""
    if response.status_code < 400:
        return
    detail = response.reason_phrase
    try:
        body = response.text.strip()
    except Exception:  # a streamed body not read yet
        body = ""
    if body and len(body) < 300 and "\n" not in body:
        detail += f": {body}"
    if response.status_code in (401, 403):
        raise RefusedError(
            f"{what}: HTTP {response.status_code} {detail}",
            hint="check the profile's auth settings and credentials (`medimg login PROFILE`)",
        )
    raise RemoteError(f"{what}: HTTP {response.status_code} {detail}",
                      hint="the server refused the request; rerun with -vv for the exchange")


def request(
    client: httpx.Client, method: str, url: str, *, what: str, idempotent: bool = True,
    answered: tuple[int, ...] = (), **kwargs: Any,
) -> httpx.Response:
    """Send a request (retrying idempotent ones); raise medimg errors for failures.

    Statuses in `answered` are returned, not raised: the caller reads their
    body (a STOW-RS 409 lists the instances that failed, and why).
    """
    import httpx

    attempt = 0
    while True:
        started = time.perf_counter()
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            if idempotent and attempt < MAX_RETRIES:
                attempt += 1
                continue
            raise ConnectError(f"{what}: no answer from {client.base_url} in time",
                               hint="--timeout sets the limit") from None
        except httpx.ConnectError as exc:
            if idempotent and attempt < MAX_RETRIES:
                time.sleep(min(0.5 * 2**attempt, MAX_RETRY_WAIT))
                attempt += 1
                continue
            raise ConnectError(f"{what}: cannot connect to {client.base_url}: {exc}",
                               hint="check url in the profile and that the server runs") from None
        except httpx.TransportError as exc:
            raise ConnectError(f"{what}: {type(exc).__name__}: {exc}") from None
        log.debug("%s %s -> %s in %.3f s; request headers %s", method, response.request.url,
                  response.status_code, time.perf_counter() - started,
                  redact_headers(response.request.headers,
                                 getattr(client, "medimg_secret_headers", ())))
        if response.status_code in RETRY_STATUSES and idempotent and attempt < MAX_RETRIES:
            time.sleep(_retry_after(response, attempt))
            attempt += 1
            continue
        if response.status_code not in answered:
            check_response(response, what)
        return response
