"""A profile's OAuth settings, and the endpoints: configured, or discovered.

Endpoints come from the profile (`oauth.token_url`, `authorize_url`,
`device_url`, `revoke_url`) or, for what is missing, from the issuer's
OpenID / OAuth metadata when `oauth.issuer` is set, else from
`<url>/.well-known/smart-configuration` (SMART App Launch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_cli.errors import ConfigError, ConnectError, RefusedError

if TYPE_CHECKING:
    import httpx

    from medimg_cli.config import Profile

log = logging.getLogger("medimg.auth")

DEFAULT_SCOPES = {
    "authorization-code": "openid fhirUser offline_access user/*.read",
    "device": "openid fhirUser offline_access user/*.read",
    "client-credentials": "system/*.read",
    "backend-services": "system/*.read",
}
INTERACTIVE_FLOWS = ("authorization-code", "device")


@dataclass(frozen=True)
class Endpoints:
    token: str | None = None
    authorize: str | None = None
    device: str | None = None
    revoke: str | None = None


@dataclass(frozen=True)
class OAuthSettings:
    """What the flows need from a profile with `auth = "oauth"`."""

    profile: str
    url: str
    flow: str
    client_id: str
    scope: str
    audience: str | None
    issuer: str | None
    client_auth: str
    client_secret_env: str | None
    private_key_file: Path
    key_id: str | None
    alg: str | None
    redirect_port: int
    endpoints: Endpoints
    timeout: float
    verify: Any
    cert: Any

    @property
    def interactive(self) -> bool:
        return self.flow in INTERACTIVE_FLOWS

    @property
    def uses_secret(self) -> bool:
        """Whether the client authenticates with a client secret."""
        return self.flow == "client-credentials" or (
            self.interactive and self.client_secret_env is not None)


def default_key_file(profile: str) -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("medimg")) / "keys" / f"{profile}.pem"


def settings_for(profile: Profile) -> OAuthSettings:
    """The OAuth settings of a profile; ConfigError when it is not set up for OAuth."""
    oauth = profile.get("oauth") or {}
    if profile.get("auth") != "oauth" or not oauth:
        raise ConfigError(
            f"profile '{profile.name}' does not use OAuth (auth = "
            f"\"{profile.get('auth', 'none')}\")",
            hint="set auth = \"oauth\" with oauth.flow and oauth.client_id in the profile",
        )
    flow = oauth.get("flow")
    client_id = oauth.get("client_id")
    if not flow or not client_id:
        missing = "oauth.flow" if not flow else "oauth.client_id"
        raise ConfigError(f"profile '{profile.name}': {missing} is missing",
                          hint="auth = \"oauth\" needs oauth.flow and oauth.client_id")
    verify: Any = True
    if profile.get("ca_file"):
        import ssl

        verify = ssl.create_default_context(cafile=str(profile.get("ca_file")))
    if profile.get("verify") is False:
        verify = False
    cert = None
    if profile.get("cert_file"):
        cert = ((str(profile.get("cert_file")), str(profile.get("key_file")))
                if profile.get("key_file") else str(profile.get("cert_file")))
    key_file = oauth.get("private_key_file")
    return OAuthSettings(
        profile=profile.name,
        url=str(profile.get("url")).rstrip("/"),
        flow=str(flow),
        client_id=str(client_id),
        scope=str(oauth.get("scope") or DEFAULT_SCOPES[str(flow)]),
        audience=oauth.get("audience"),
        issuer=(str(oauth["issuer"]).rstrip("/") if oauth.get("issuer") else None),
        client_auth=str(oauth.get("client_auth", "client_secret_basic")),
        client_secret_env=oauth.get("client_secret_env"),
        private_key_file=(Path(str(key_file)).expanduser() if key_file
                          else default_key_file(profile.name)),
        key_id=oauth.get("key_id"),
        alg=oauth.get("alg"),
        redirect_port=int(oauth.get("redirect_port", 0)),
        endpoints=Endpoints(
            token=oauth.get("token_url"),
            authorize=oauth.get("authorize_url"),
            device=oauth.get("device_url"),
            revoke=oauth.get("revoke_url"),
        ),
        timeout=profile.timeout,
        verify=verify,
        cert=cert,
    )


def http_client(settings: OAuthSettings) -> httpx.Client:
    """An httpx client for the authorization server (the profile's TLS settings).

    With `--trace FILE` open it carries the same hooks as `open_client`: discovery,
    token, device and revocation exchanges are traced, their secrets redacted.
    """
    import httpx

    from medimg_cli import __version__
    from medimg_cli.dicomweb.tracing import event_hooks as trace_hooks

    return httpx.Client(
        headers={"User-Agent": f"medimg/{__version__}", "Accept": "application/json"},
        verify=settings.verify,
        cert=settings.cert,
        timeout=httpx.Timeout(settings.timeout),
        follow_redirects=True,
        trust_env=True,
        event_hooks=trace_hooks(),
    )


def _fetch_metadata(http: httpx.Client, url: str) -> dict[str, Any] | None:
    import httpx

    try:
        response = http.get(url)
    except httpx.TransportError as exc:
        log.debug("discovery: GET %s failed: %s", url, type(exc).__name__)
        return None
    log.debug("discovery: GET %s -> %s", url, response.status_code)
    if response.status_code != 200:
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def metadata_urls(settings: OAuthSettings) -> list[str]:
    """Where the authorization server's metadata may be, in the order tried."""
    if settings.issuer:
        return [f"{settings.issuer}/.well-known/openid-configuration",
                f"{settings.issuer}/.well-known/oauth-authorization-server"]
    return [f"{settings.url}/.well-known/smart-configuration"]


def resolve_endpoints(settings: OAuthSettings, http: httpx.Client, *,
                      need: tuple[str, ...] = ("token",)) -> Endpoints:
    """The profile's endpoints, completed from discovery when one in `need` is missing."""
    eps = settings.endpoints
    wanted = [name for name in (*need, "revoke") if getattr(eps, name) is None]
    if not any(name in need for name in wanted):
        return eps
    urls = metadata_urls(settings)
    data = None
    for url in urls:
        data = _fetch_metadata(http, url)
        if data is not None:
            break
    if data is None:
        raise ConnectError(
            f"profile '{settings.profile}': no OAuth endpoints configured and no metadata at "
            + " or ".join(urls),
            hint="set oauth.issuer (or oauth.token_url, oauth.authorize_url) in the profile",
        )
    found = replace(
        eps,
        token=eps.token or data.get("token_endpoint"),
        authorize=eps.authorize or data.get("authorization_endpoint"),
        device=eps.device or data.get("device_authorization_endpoint"),
        revoke=eps.revoke or data.get("revocation_endpoint"),
    )
    for name in need:
        if getattr(found, name) is None:
            raise RefusedError(
                f"profile '{settings.profile}': the server's metadata names no {name} endpoint",
                hint=f"set oauth.{name}_url in the profile, or use another oauth.flow",
            )
    return found
