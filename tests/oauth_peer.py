"""The real OAuth 2 / OpenID provider of the test suite: panva's oidc-provider on loopback.

``tests/oauth_server/`` holds its package.json, package-lock.json and provider.js;
``scripts/ensure-peers.sh`` runs ``npm ci`` there. The session fixture
``oauth_server`` (tests/conftest.py) -> :class:`OAuthServer` starts it on a free
127.0.0.1 port.

For FHIR tests (how to get a token sekmet-fhir accepts)
-------------------------------------------------------
Access tokens for a *resource* are JWTs signed **HS256** with
``oauth_server.jwt_secret`` (start sekmet with ``kv.jwt_secret`` = that value).
Their ``aud`` is the RFC 8707 ``resource`` the client asked for: any
``http://127.0.0.1:PORT/...`` URL (or ``urn:...``); without one it is
``oauth_server.default_audience``. Scopes granted are the SMART ones the
client asks for (``system/*.read``, ``system/*.write``, ``user/*.read``,
``patient/*.read``, ``system/DiagnosticReport.write``, v2 ``*.rs`` / ``*.cruds``…);
unknown scopes are dropped silently.

- In the test process: ``oauth_server.client_credentials_token(scope="system/*.read",
  audience=fhir_base_url)`` -> the access token string (client ``medimg-basic``,
  lives ``client_credentials_ttl`` = 300 s).
- For medimg subprocesses: a profile with
  ``oauth_server.profile_toml("ehr", url=fhir_base_url, scope="system/*.read system/*.write")``
  (client-credentials, client ``medimg-basic``, secret from the env var
  ``OAUTH_CLIENT_SECRET``: pass ``env=oauth_server.client_env()``) — medimg then fetches
  and refreshes tokens by itself, no ``login`` and no keyring needed.

Clients: ``medimg-native`` (public, PKCE, loopback redirect, short-lived tokens),
``medimg-device`` (public, device grant, short-lived tokens), ``medimg-basic`` /
``medimg-post`` (client_secret_basic / _post, client credentials), ``medimg-rs384`` /
``medimg-es384`` (private_key_jwt; keys in ``rs384_key_file`` / ``es384_key_file``).
``register_client(jwks, alg)`` registers another private_key_jwt client (dynamic
registration), for the JWKS ``medimg login --keygen`` writes.

``keyring_env(path)`` gives the environment that points medimg subprocesses at a
file-backed test keyring (tests/testkeyring.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from peers import LOOPBACK, _set_pdeathsig, free_port, in_ci, toml_value

SERVER_DIR = Path(__file__).resolve().parent / "oauth_server"
TESTS_DIR = Path(__file__).resolve().parent

NATIVE_CLIENT = "medimg-native"
DEVICE_CLIENT = "medimg-device"
BASIC_CLIENT = "medimg-basic"
POST_CLIENT = "medimg-post"
RS384_CLIENT = "medimg-rs384"
ES384_CLIENT = "medimg-es384"
SECRET_ENV = "OAUTH_CLIENT_SECRET"


def keyring_env(path: Path) -> dict[str, str]:
    """Environment for a medimg subprocess that uses the file keyring at ``path``."""
    pythonpath = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH"))
                                 if p)
    return {"PYTHON_KEYRING_BACKEND": "testkeyring.FileKeyring", "TEST_KEYRING_FILE": str(path),
            "PYTHONPATH": pythonpath}


NO_KEYRING_ENV = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}


def _require_node() -> str:
    node = shutil.which("node")
    message = None
    if node is None:
        message = "Node.js not found: install the Debian packages 'nodejs npm'"
    elif not (SERVER_DIR / "node_modules" / "oidc-provider").is_dir():
        message = f"oidc-provider not installed: run `npm ci` in {SERVER_DIR} (make peers)"
    if message:
        if in_ci():
            pytest.fail(f"{message}; under CI=true a missing peer is a failure", pytrace=False)
        pytest.skip(message)
    assert node is not None
    return node


def _key_pair(alg: str, path: Path) -> dict[str, Any]:
    """Write a private key (PEM) and return its public JWKS."""
    from medimg_cli.auth import keys

    key = keys.generate_key(alg) if alg == "ES384" else None
    if key is None:  # RSA 2048 is enough for a test and faster to make than 3072
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys.write_private_key(key, path, force=True)
    return {"keys": [keys.public_jwk(key, alg)]}


class OAuthServer:
    """A running oidc-provider; see the module docstring."""

    def __init__(self, workdir: Path, *, short_ttl: int = 6) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.issuer = f"http://{LOOPBACK}:{self.port}"
        self.token_url = f"{self.issuer}/token"
        self.jwt_secret = secrets.token_urlsafe(32)
        self.basic_secret = "basic-" + secrets.token_urlsafe(24)
        self.post_secret = "post-" + secrets.token_urlsafe(24)
        self.initial_access_token = secrets.token_urlsafe(24)
        self.default_audience = f"{self.issuer}/fhir"
        self.short_ttl = short_ttl
        self.client_credentials_ttl = 300
        self.rs384_key_file = workdir / "rs384.pem"
        self.es384_key_file = workdir / "es384.pem"
        self.log_path = workdir / "oidc-provider.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- process

    def start(self, timeout: float = 30.0) -> OAuthServer:
        node = _require_node()
        config = {
            "port": self.port,
            "jwt_secret": self.jwt_secret,
            "basic_secret": self.basic_secret,
            "post_secret": self.post_secret,
            "rs384_jwks": _key_pair("RS384", self.rs384_key_file),
            "es384_jwks": _key_pair("ES384", self.es384_key_file),
            "cookie_key": secrets.token_urlsafe(16),
            "initial_access_token": self.initial_access_token,
            "default_audience": self.default_audience,
            "short_ttl": self.short_ttl,
            "client_credentials_ttl": self.client_credentials_ttl,
            "device_interval": 1,
        }
        config_path = self.workdir / "provider.json"
        config_path.write_text(json.dumps(config))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [node, str(SERVER_DIR / "provider.js"), str(config_path)],
            cwd=SERVER_DIR, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_set_pdeathsig,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"oidc-provider exited ({self.process.returncode}):\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            with contextlib.suppress(httpx.TransportError):
                r = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1)
                if r.status_code == 200:
                    self.metadata: dict[str, Any] = r.json()
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("oidc-provider did not come up:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.1)

    def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- what tests use

    @property
    def secrets(self) -> list[str]:
        """Values that must never appear in medimg's output, logs or config."""
        return [self.basic_secret, self.post_secret, self.jwt_secret]

    def client_env(self, client: str = BASIC_CLIENT) -> dict[str, str]:
        """``{OAUTH_CLIENT_SECRET: ...}`` for a client-credentials profile of ``client``."""
        return {SECRET_ENV: self.basic_secret if client == BASIC_CLIENT else self.post_secret}

    def client_credentials_token(self, scope: str = "system/*.read",
                                 audience: str | None = None,
                                 client: str = BASIC_CLIENT) -> str:
        """An access token (HS256 JWT for ``audience``) from the client credentials grant."""
        data = {"grant_type": "client_credentials", "scope": scope}
        if audience:
            data["resource"] = audience
        secret = self.basic_secret if client == BASIC_CLIENT else self.post_secret
        r = httpx.post(self.token_url, data=data, auth=(client, secret), timeout=10)
        r.raise_for_status()
        token: str = r.json()["access_token"]
        return token

    def profile_toml(self, name: str, *, url: str | None = None, ptype: str = "fhir",
                     flow: str = "client-credentials", client_id: str = BASIC_CLIENT,
                     issuer: bool = True, **oauth: Any) -> str:
        """``[profiles.NAME]`` with ``auth = "oauth"`` against this provider.

        Client-credentials profiles read the secret from ``$OAUTH_CLIENT_SECRET``
        unless ``client_secret_env=None`` is passed. ``url`` defaults to the
        default audience; the token's audience is ``oauth.audience`` (default: ``url``).
        """
        target = url or self.default_audience
        values: dict[str, Any] = {"flow": flow, "client_id": client_id,
                                  "audience": target}
        if issuer:
            values["issuer"] = self.issuer
        if flow == "client-credentials":
            values["client_secret_env"] = SECRET_ENV
            values["client_auth"] = ("client_secret_post" if client_id == POST_CLIENT
                                     else "client_secret_basic")
        if flow == "backend-services" and client_id in (RS384_CLIENT, ES384_CLIENT):
            values["private_key_file"] = str(self.rs384_key_file if client_id == RS384_CLIENT
                                             else self.es384_key_file)
        values.update(oauth)
        lines = [f"[profiles.{name}]", f"type = {toml_value(ptype)}",
                 f"url = {toml_value(target)}", 'auth = "oauth"']
        lines += [f"oauth.{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
        return "\n".join(lines) + "\n"

    def register_client(self, jwks: dict[str, Any], alg: str) -> str:
        """Register a private_key_jwt client-credentials client; its client_id."""
        r = httpx.post(f"{self.issuer}/reg", timeout=10, headers={
            "Authorization": f"Bearer {self.initial_access_token}"}, json={
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": alg, "jwks": jwks,
            "grant_types": ["client_credentials"], "response_types": [], "redirect_uris": []})
        assert r.status_code == 201, r.text
        client_id: str = r.json()["client_id"]
        return client_id

    # -- a person at the browser, over HTTP

    def complete_login(self, url: str, *, user: str = "alice", deny: bool = False) -> httpx.URL:
        """Follow a login URL through the dev login and consent forms.

        Returns the final redirect target outside the provider (the client's
        redirect URI, not visited), or the provider's last page URL (device flow).
        """
        with httpx.Client(follow_redirects=False, timeout=10) as browser:
            response = browser.get(url)
            for _ in range(20):
                if response.is_redirect:
                    target = response.url.join(response.headers["location"])
                    if target.port != self.port:
                        return target
                    response = browser.get(target)
                    continue
                forms = _Forms.parse(response.text)
                if not forms:
                    assert response.status_code == 200, response.text[:500]
                    return response.url
                form = forms[0]
                fields = dict(form["fields"])
                if "login" in fields:
                    fields.update(login=user, password="any")
                if deny and fields.get("prompt") == "consent":
                    abort = response.url.join(f"{response.url.path}/abort")
                    response = browser.get(abort)
                    continue
                response = browser.request(str(form["method"]).upper(),
                                           response.url.join(str(form["action"])), data=fields)
        raise AssertionError("the login did not finish in 20 steps")


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None

    @classmethod
    def parse(cls, text: str) -> list[dict[str, Any]]:
        parser = cls()
        parser.feed(text)
        return parser.forms

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self._current = {"action": a.get("action") or "", "method": a.get("method") or "get",
                             "fields": {}}
            self.forms.append(self._current)
        elif tag in ("input", "button") and self._current is not None and a.get("name"):
            self._current["fields"].setdefault(a["name"], a.get("value") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def start_oauth_server(workdir: Path) -> OAuthServer:
    """Start the provider in ``workdir`` (stop it with ``.stop()``)."""
    return OAuthServer(workdir).start()


def medimg_popen(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """medimg as a background process (for a login that waits on the browser)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIMG_")}
    full_env.update(env)
    return subprocess.Popen([sys.executable, "-m", "medimg_cli", *args], env=full_env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
