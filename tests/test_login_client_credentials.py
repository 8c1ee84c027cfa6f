"""`login` / `token` / `logout` with client credentials and Backend Services, against oidc-provider.

Each medimg run is a new process; the token set travels between them in the
(file-backed) test keyring, one entry per profile.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import testkeyring
from cli_helpers import medimg, write_config
from oauth_peer import (
    ES384_CLIENT,
    NO_KEYRING_ENV,
    POST_CLIENT,
    RS384_CLIENT,
    SECRET_ENV,
    OAuthServer,
    keyring_env,
)


def jwt_claims(token: str, secret: str) -> dict[str, Any]:
    """The claims of an HS256 JWT, after checking its signature with `secret`."""
    head, body, sig = token.split(".")
    expected = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(sig + "==") == expected, "bad HS256 signature"
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    assert header["alg"] == "HS256"
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=="))
    return claims


def test_client_credentials_login_token_and_logout(tmp_path: Path,
                                                   oauth_server: OAuthServer) -> None:
    config = write_config(tmp_path / "c.toml", oauth_server.profile_toml(
        "ehr", scope="system/*.read system/DiagnosticReport.write"))
    store = tmp_path / "keyring.json"
    env = {**keyring_env(store), **oauth_server.client_env()}

    login = medimg("login", "ehr", config=config, env=env)
    assert login.code == 0, login.stderr
    assert "Logged in to 'ehr'" in login.stderr
    entries = testkeyring.read(store)
    assert set(entries) == {"ehr:oauth"}  # one entry: the token set
    stored = json.loads(entries["ehr:oauth"])
    assert stored["token_endpoint"] == oauth_server.token_url

    status = medimg("token", "ehr", "--format", "json", config=config, env=env)
    assert status.code == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["logged_in"] and shown["flow"] == "client-credentials"
    assert shown["scope"] == "system/*.read system/DiagnosticReport.write"
    assert 250 < shown["expires_in"] <= 300
    assert shown["token_endpoint"] == oauth_server.token_url
    assert stored["access_token"] not in status.stdout + status.stderr

    printed = medimg("token", "ehr", "--print-access-token", config=config, env=env)
    assert printed.code == 0, printed.stderr
    token = printed.stdout.strip()
    assert token == stored["access_token"]  # still fresh: no new grant
    claims = jwt_claims(token, oauth_server.jwt_secret)
    assert claims["aud"] == oauth_server.default_audience
    assert claims["client_id"] == "medimg-basic"

    logout = medimg("logout", "ehr", config=config, env=env)
    assert logout.code == 0, logout.stderr
    assert "Logged out of 'ehr'" in logout.stderr
    assert testkeyring.read(store) == {}
    after = medimg("token", "ehr", config=config, env=env)
    assert after.code == 4
    assert "not logged in" in after.stdout


def test_client_secret_post_read_from_stdin_is_kept_in_the_keyring(
        tmp_path: Path, oauth_server: OAuthServer) -> None:
    profile = oauth_server.profile_toml("cs", client_id=POST_CLIENT, client_secret_env=None)
    config = write_config(tmp_path / "c.toml", profile)
    store = tmp_path / "keyring.json"
    env = keyring_env(store)
    login = medimg("login", "cs", "--stdin", config=config, env=env,
                   input=oauth_server.post_secret + "\n")
    assert login.code == 0, login.stderr
    assert testkeyring.read(store)["cs:client_secret"] == oauth_server.post_secret
    assert oauth_server.post_secret not in login.stdout + login.stderr
    assert oauth_server.post_secret not in config.read_text()
    # The cached token is dropped: a new grant needs the stored secret (client_secret_post).
    entries = testkeyring.read(store)
    stored = json.loads(entries["cs:oauth"])
    stored["expires_at"] = stored["obtained_at"]
    store_raw = json.loads(store.read_text())
    store_raw["medimg\0cs:oauth"] = json.dumps(stored)
    store.write_text(json.dumps(store_raw))
    again = medimg("-vv", "token", "cs", "--print-access-token", config=config, env=env)
    assert again.code == 0, again.stderr
    assert again.stdout.strip() != stored["access_token"]
    assert "(client_credentials) -> 200" in again.stderr
    logout = medimg("logout", "cs", config=config, env=env)
    assert logout.code == 0
    assert testkeyring.read(store) == {}


def test_wrong_client_secret_is_refused_without_showing_it(tmp_path: Path,
                                                           oauth_server: OAuthServer) -> None:
    config = write_config(tmp_path / "c.toml", oauth_server.profile_toml("ehr"))
    wrong = "not-the-secret-0123456789"
    result = medimg("-vv", "login", "ehr", config=config,
                    env={**keyring_env(tmp_path / "k.json"), SECRET_ENV: wrong})
    assert result.code == 4, result.stderr
    assert "invalid_client" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_unset_client_secret_env_is_named_when_there_is_no_terminal_to_ask(
        tmp_path: Path, oauth_server: OAuthServer) -> None:
    config = write_config(tmp_path / "c.toml", oauth_server.profile_toml("ehr"))
    result = medimg("login", "ehr", config=config, env=keyring_env(tmp_path / "k.json"))
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medimg: "), result.stderr
    assert f"${SECRET_ENV} is not set" in lines[0] and "--stdin" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("client_id", [RS384_CLIENT, ES384_CLIENT])
def test_backend_services_signs_the_assertion_the_client_is_registered_for(
        tmp_path: Path, oauth_server: OAuthServer, client_id: str) -> None:
    # The provider only accepts this client's own alg (token_endpoint_auth_signing_alg).
    config = write_config(tmp_path / "c.toml", oauth_server.profile_toml(
        "bs", flow="backend-services", client_id=client_id))
    env = keyring_env(tmp_path / "k.json")
    login = medimg("-vv", "login", "bs", config=config, env=env)
    assert login.code == 0, login.stderr
    assert "BEGIN" not in login.stderr  # no key material in the log
    token = medimg("token", "bs", "--print-access-token", config=config, env=env)
    assert token.code == 0, token.stderr
    assert jwt_claims(token.stdout.strip(), oauth_server.jwt_secret)["client_id"] == client_id


def test_backend_services_with_the_wrong_key_is_refused(tmp_path: Path,
                                                        oauth_server: OAuthServer) -> None:
    config = write_config(tmp_path / "c.toml", oauth_server.profile_toml(
        "bs", flow="backend-services", client_id=RS384_CLIENT,
        private_key_file=str(oauth_server.es384_key_file)))
    result = medimg("login", "bs", config=config, env=keyring_env(tmp_path / "k.json"))
    assert result.code == 4, result.stderr
    assert "invalid_client" in result.stderr


@pytest.mark.parametrize(("alg", "kty", "private_members"), [
    ("ES384", "EC", {"d"}),
    ("RS384", "RSA", {"d", "p", "q", "dp", "dq", "qi"}),
])
def test_keygen_writes_a_jwks_the_server_accepts(tmp_path: Path, oauth_server: OAuthServer,
                                                 alg: str, kty: str,
                                                 private_members: set[str]) -> None:
    key_file = tmp_path / "keys" / "epic.pem"
    config = write_config(tmp_path / "c.toml", oauth_server.profile_toml(
        "epic", flow="backend-services", client_id="placeholder", alg=alg,
        private_key_file=str(key_file)))
    env = keyring_env(tmp_path / "k.json")
    keygen = medimg("login", "epic", "--keygen", config=config, env=env)
    assert keygen.code == 0, keygen.stderr
    jwks = json.loads(keygen.stdout)
    (jwk,) = jwks["keys"]
    assert jwk["kty"] == kty and jwk["alg"] == alg and jwk["kid"]
    assert not private_members & set(jwk)  # the public half only
    assert key_file.stat().st_mode & 0o077 == 0
    assert json.loads((tmp_path / "keys" / "epic.jwks.json").read_text()) == jwks
    again = medimg("login", "epic", "--keygen", config=config, env=env)
    assert again.code == 2 and "exists already" in again.stderr

    # The EHR registers the JWKS; the profile then names the client id it got.
    client_id = oauth_server.register_client(jwks, alg)
    config.write_text(config.read_text().replace('"placeholder"', json.dumps(client_id)))
    login = medimg("login", "epic", config=config, env=env)
    assert login.code == 0, login.stderr
    token = medimg("token", "epic", "--print-access-token", config=config, env=env)
    assert token.code == 0, token.stderr
    assert jwt_claims(token.stdout.strip(), oauth_server.jwt_secret)["client_id"] == client_id


def test_headless_host_without_keyring_uses_the_client_secret_env(
        tmp_path: Path, oauth_server: OAuthServer) -> None:
    config = write_config(tmp_path / "c.toml", oauth_server.profile_toml("ehr"))
    result = medimg("token", "ehr", "--print-access-token", config=config,
                    env={**NO_KEYRING_ENV, **oauth_server.client_env()})
    assert result.code == 0, result.stderr
    assert jwt_claims(result.stdout.strip(), oauth_server.jwt_secret)["sub"] == "medimg-basic"


def test_endpoints_are_discovered_from_smart_configuration(
        tmp_path: Path, oauth_server: OAuthServer) -> None:
    # A FHIR base that publishes .well-known/smart-configuration, as EHRs do.
    document = json.dumps({key: oauth_server.metadata[key] for key in (
        "issuer", "authorization_endpoint", "token_endpoint", "revocation_endpoint",
        "token_endpoint_auth_methods_supported", "code_challenge_methods_supported")})

    class Fhir(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/fhir/.well-known/smart-configuration"
            body = document.encode() if found else b"{}"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fhir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/fhir"
        config = write_config(tmp_path / "c.toml", oauth_server.profile_toml(
            "ehr", url=url, issuer=False))
        env = {**keyring_env(tmp_path / "k.json"), **oauth_server.client_env()}
        login = medimg("-vv", "login", "ehr", config=config, env=env)
        assert login.code == 0, login.stderr
        assert "smart-configuration -> 200" in login.stderr
        status = json.loads(medimg("token", "ehr", "-f", "json", config=config,
                                   env=env).stdout)
        assert status["token_endpoint"] == oauth_server.token_url
        assert status["revocation_endpoint"] == oauth_server.metadata["revocation_endpoint"]
        # No metadata anywhere: the error names where it looked (exit 3).
        bad = write_config(tmp_path / "bad.toml", oauth_server.profile_toml(
            "ehr", url=url + "/nothing", issuer=False))
        missing = medimg("login", "ehr", config=bad, env=env)
        assert missing.code == 3
        assert "/nothing/.well-known/smart-configuration" in missing.stderr
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("client_id", [POST_CLIENT, RS384_CLIENT])
def test_traced_login_has_the_token_request_and_no_secret(
        tmp_path: Path, oauth_server: OAuthServer, client_id: str) -> None:
    # client_secret_post puts the secret in the form; private_key_jwt an assertion.
    flow = "client-credentials" if client_id == POST_CLIENT else "backend-services"
    config = write_config(tmp_path / "c.toml", oauth_server.profile_toml(
        "ehr", flow=flow, client_id=client_id))
    store = tmp_path / "k.json"
    env = {**keyring_env(store), **oauth_server.client_env(client_id)}
    trace = tmp_path / "login.trace"
    login = medimg("--trace", str(trace), "login", "ehr", config=config, env=env)
    assert login.code == 0, login.stderr
    text = trace.read_text()
    assert f"> POST {oauth_server.token_url}" in text
    assert f"< 200 OK for POST {oauth_server.token_url}" in text
    assert "/.well-known/" in text  # discovery is traced too
    assert "grant_type=client_credentials" in text
    access_token = json.loads(testkeyring.read(store)["ehr:oauth"])["access_token"]
    assert '"access_token": "<secret>"' in text or '"access_token":"<secret>"' in text
    leaked = [s for s in (*oauth_server.secrets, access_token) if s in text]
    assert not leaked
    if client_id == RS384_CLIENT:
        assert "client_assertion=<secret>" in text and "eyJ" not in text
    else:
        assert "client_secret=<secret>" in text
