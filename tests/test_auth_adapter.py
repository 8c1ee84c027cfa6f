"""The `oauth` auth adapter (bearer token, refresh once on 401) and the pieces of the flows
that a real server does not exercise: Backend Services assertions, slow_down, expiry margins.

The authorization server is the real oidc-provider; a resource server that answers
401 and a device endpoint that says slow_down are fault injection (httpx.MockTransport).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import keyring
import pytest
import testkeyring
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from oauth_peer import SECRET_ENV, OAuthServer

from medimg_cli.auth import flows, keys
from medimg_cli.auth.session import OAuthAuth, OAuthSession
from medimg_cli.auth.settings import settings_for
from medimg_cli.auth.tokens import TokenSet
from medimg_cli.config import Profile, parse_config


def profile_from(toml: str, tmp_path: Path) -> Profile:
    config = parse_config(toml, tmp_path / "c.toml")
    return next(iter(config.profiles.values()))


@pytest.fixture
def file_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    store = tmp_path / "keyring.json"
    monkeypatch.setenv("TEST_KEYRING_FILE", str(store))
    previous = keyring.get_keyring()
    keyring.set_keyring(testkeyring.FileKeyring())
    try:
        yield store
    finally:
        keyring.set_keyring(previous)


def b64json(part: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=="))
    return data


def test_a_401_refreshes_once_and_retries(tmp_path: Path, oauth_server: OAuthServer,
                                          file_keyring: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, oauth_server.basic_secret)
    profile = profile_from(oauth_server.profile_toml("ehr"), tmp_path)
    seen: list[str] = []

    def resource(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        # The first token is "revoked" at the resource server.
        return httpx.Response(401 if len(seen) == 1 else 200, json={})

    with OAuthSession(profile) as session, httpx.Client(
            transport=httpx.MockTransport(resource), auth=OAuthAuth(session)) as client:
        response = client.get("http://fhir.invalid/Patient")
        assert response.status_code == 200
        assert len(seen) == 2 and seen[0] != seen[1]
        assert all(h.startswith("Bearer ") for h in seen)
        assert session.refreshes == 1
        stored = json.loads(testkeyring.read(file_keyring)["ehr:oauth"])
        assert seen[1] == f"Bearer {stored['access_token']}"  # the new token was stored


def test_a_second_401_is_returned_not_looped(tmp_path: Path, oauth_server: OAuthServer,
                                            file_keyring: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, oauth_server.basic_secret)
    profile = profile_from(oauth_server.profile_toml("ehr"), tmp_path)
    calls = []

    def resource(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401)

    with OAuthSession(profile) as session, httpx.Client(
            transport=httpx.MockTransport(resource), auth=OAuthAuth(session)) as client:
        assert client.get("http://fhir.invalid/Patient").status_code == 401
    assert len(calls) == 2


def test_the_http_layer_uses_the_oauth_adapter_for_oauth_profiles(
        tmp_path: Path, oauth_server: OAuthServer, file_keyring: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from medimg_cli.dicomweb.client import open_client

    monkeypatch.setenv(SECRET_ENV, oauth_server.basic_secret)
    profile = profile_from(oauth_server.profile_toml("web", ptype="dicomweb"), tmp_path)
    with open_client(profile) as client:
        assert isinstance(client.auth, OAuthAuth)
        request = next(client.auth.sync_auth_flow(httpx.Request("GET", "http://x/studies")))
    token = request.headers["Authorization"].removeprefix("Bearer ")
    assert b64json(token.split(".")[1])["aud"] == oauth_server.default_audience


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_backend_services_assertion_claims_and_signature(alg: str) -> None:
    key = keys.generate_key(alg)
    kid = keys.public_jwk(key, alg)["kid"]
    first = keys.client_assertion("client-1", "https://ehr.example/token", key, alg, kid)
    second = keys.client_assertion("client-1", "https://ehr.example/token", key, alg, kid)
    head, body, sig = first.split(".")
    header, claims = b64json(head), b64json(body)
    assert header == {"alg": alg, "kid": kid, "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == "client-1"
    assert claims["aud"] == "https://ehr.example/token"
    assert 0 < claims["exp"] - int(time.time()) <= 300
    assert claims["jti"] != b64json(second.split(".")[1])["jti"]
    signature = base64.urlsafe_b64decode(sig + "==")
    signed = f"{head}.{body}".encode()
    if isinstance(key, rsa.RSAPrivateKey):
        key.public_key().verify(signature, signed, padding.PKCS1v15(), hashes.SHA384())
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey) and len(signature) == 96
        der = encode_dss_signature(int.from_bytes(signature[:48], "big"),
                                   int.from_bytes(signature[48:], "big"))
        key.public_key().verify(der, signed, ec.ECDSA(hashes.SHA384()))


def test_device_flow_slows_down_when_told(tmp_path: Path) -> None:
    profile = profile_from("""[profiles.d]
type = "fhir"
url = "https://ehr.invalid/fhir"
auth = "oauth"
oauth.flow = "device"
oauth.client_id = "c"
oauth.token_url = "https://as.invalid/token"
oauth.device_url = "https://as.invalid/device"
oauth.revoke_url = "https://as.invalid/revoke"
""", tmp_path)
    answers = iter(["authorization_pending", "slow_down", "authorization_pending", None])

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/device":
            return httpx.Response(200, json={
                "device_code": "dc", "user_code": "ABCD-EFGH", "interval": 2,
                "verification_uri": "https://as.invalid/activate", "expires_in": 600})
        error = next(answers)
        if error:
            return httpx.Response(400, json={"error": error})
        return httpx.Response(200, json={"access_token": "at", "refresh_token": "rt",
                                         "expires_in": 60, "token_type": "Bearer"})

    waits: list[float] = []
    said: list[str] = []
    with httpx.Client(transport=httpx.MockTransport(server)) as http:
        tokens = flows.device(settings_for(profile), http, said.append, timeout=600,
                              sleep=waits.append)
    assert waits == [2, 2, 7, 7]  # RFC 8628: +5 s after slow_down
    assert tokens.refresh_token == "rt"
    assert any("ABCD-EFGH" in line and "https://as.invalid/activate" in line for line in said)


def test_refresh_margin_and_a_missing_rotated_token_keeps_the_old_one() -> None:
    now = time.time()
    tokens = TokenSet("acc-xyz", "https://as/token", "device", "c", refresh_token="r1-xyz",
                      expires_at=now + 3600, obtained_at=now)
    assert not tokens.needs_refresh(now)
    assert tokens.needs_refresh(now + 3600 - 59)  # at most 60 s ahead
    short = TokenSet("a", "t", "device", "c", expires_at=now + 8, obtained_at=now)
    assert not short.needs_refresh(now + 5) and short.needs_refresh(now + 6.1)  # 1/4 ahead
    renewed = TokenSet.from_response({"access_token": "b", "expires_in": 60},
                                     token_endpoint="t", flow="device", client_id="c",
                                     revocation_endpoint=None, previous=tokens)
    assert renewed.refresh_token == "r1-xyz"
    launched = TokenSet.from_response({"access_token": "c", "patient": "pat-7"},
                                      token_endpoint="t", flow="authorization-code",
                                      client_id="c", revocation_endpoint=None)
    assert launched.status()["patient"] == "pat-7"  # SMART launch context is kept
    assert launched.status()["expires_in"] is None and not launched.needs_refresh()
    assert "acc-xyz" not in repr(tokens) and "r1-xyz" not in repr(tokens)
