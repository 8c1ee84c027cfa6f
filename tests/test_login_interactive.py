"""The interactive OAuth flows end to end against oidc-provider: authorization code
(PKCE, loopback redirect) and device grant, then the token lifecycle: refresh
before expiry, rotation, a revoked refresh token, and secrets kept out of every
output.

The "browser" is httpx posting the provider's development login and consent
forms (oauth_peer.OAuthServer.complete_login); the redirect then reaches
medimg's own loopback listener.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest
import testkeyring
from cli_helpers import medimg, write_config
from oauth_peer import DEVICE_CLIENT, NATIVE_CLIENT, OAuthServer, keyring_env, medimg_popen


def read_line(proc: subprocess.Popen[str], startswith: str, timeout: float = 30) -> str:
    """The first stderr line of `proc` that starts with `startswith`.

    A watchdog kills the process if the line does not come in time (then readline
    sees the end of the stream).
    """
    assert proc.stderr is not None
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    seen = []
    try:
        for line in iter(proc.stderr.readline, ""):
            seen.append(line)
            if line.startswith(startswith):
                return line.strip()
    finally:
        watchdog.cancel()
    proc.kill()
    proc.communicate()
    raise AssertionError(f"no line starting {startswith!r}; stderr: {''.join(seen)}")


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


class Login:
    """One profile with its config and test keyring."""

    def __init__(self, tmp_path: Path, server: OAuthServer, flow: str, client_id: str,
                 **oauth: Any) -> None:
        self.server = server
        self.name = "ehr"
        self.config = write_config(tmp_path / "c.toml", server.profile_toml(
            self.name, flow=flow, client_id=client_id,
            scope="openid offline_access user/*.read", **oauth))
        self.store = tmp_path / "keyring.json"
        self.env = keyring_env(self.store)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return medimg_popen(["--config", str(self.config), *args, "login", self.name,
                             "--no-browser"], self.env)

    def run(self, *args: str) -> Any:
        return medimg(*args, config=self.config, env=self.env)

    def stored(self) -> dict[str, Any]:
        entries = testkeyring.read(self.store)
        data: dict[str, Any] = json.loads(entries[f"{self.name}:oauth"])
        return data

    def expire(self) -> None:
        """Make the stored access token look expired (as if the clock had moved on)."""
        raw = json.loads(self.store.read_text())
        key = f"medimg\0{self.name}:oauth"
        tokens = json.loads(raw[key])
        tokens["expires_at"] = time.time() - 1
        raw[key] = json.dumps(tokens)
        self.store.write_text(json.dumps(raw))


def browser_login(login: Login, proc: subprocess.Popen[str]) -> tuple[str, httpx.Response]:
    """Read the printed URL, log in through the forms, let the redirect reach medimg."""
    url = read_line(proc, "http://")
    target = login.server.complete_login(url)
    page = httpx.get(str(target), timeout=10)
    return url, page


@pytest.fixture
def code_login(tmp_path: Path, oauth_server: OAuthServer) -> Login:
    return Login(tmp_path, oauth_server, "authorization-code", NATIVE_CLIENT)


def test_authorization_code_flow_with_pkce_and_loopback_redirect(code_login: Login) -> None:
    proc = code_login.start("-vv")
    url, page = browser_login(code_login, proc)
    code, _, err = finish(proc)
    assert code == 0, err

    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 20
    redirect = urllib.parse.urlsplit(query["redirect_uri"])
    assert redirect.hostname == "127.0.0.1" and redirect.port and redirect.path == "/callback"
    assert query["client_id"] == NATIVE_CLIENT
    assert page.status_code == 200 and "return to the terminal" in page.text

    stored = code_login.stored()
    assert stored["flow"] == "authorization-code" and stored["refresh_token"]
    assert stored["token_endpoint"] == code_login.server.token_url
    status = code_login.run("token", "ehr", "--format", "json")
    assert status.code == 0
    shown = json.loads(status.stdout)
    assert shown["logged_in"] and shown["refresh_token"] is True
    assert "user/*.read" in shown["scope"].split()
    assert 0 < shown["expires_in"] <= code_login.server.short_ttl


def test_redirect_with_another_state_is_refused(code_login: Login) -> None:
    proc = code_login.start()
    url = read_line(proc, "http://")
    redirect_uri = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["redirect_uri"]
    page = httpx.get(redirect_uri, params={"code": "forged", "state": "not-the-state"})
    code, _, err = finish(proc)
    assert page.status_code == 400
    assert code == 4 and "state" in err
    assert "Traceback" not in err
    assert not code_login.store.exists()


def test_denied_consent_is_exit_4(code_login: Login) -> None:
    proc = code_login.start()
    url = read_line(proc, "http://")
    target = code_login.server.complete_login(url, deny=True)
    httpx.get(str(target), timeout=10)
    code, _, err = finish(proc)
    assert code == 4, err
    assert "access_denied" in err


def test_login_without_a_browser_times_out_cleanly(code_login: Login) -> None:
    started = time.monotonic()
    result = code_login.run("login", "ehr", "--no-browser", "--timeout", "1")
    assert result.code == 4
    assert "no login within 1 s" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 20


def test_device_flow_shows_the_code_and_polls_until_approved(tmp_path: Path,
                                                             oauth_server: OAuthServer) -> None:
    login = Login(tmp_path, oauth_server, "device", DEVICE_CLIENT)
    proc = medimg_popen(["--config", str(login.config), "login", "ehr"], login.env)
    line = read_line(proc, "To log in, open ")
    assert f"{oauth_server.issuer}/device" in line and "enter the code" in line
    complete = read_line(proc, "(or open ").removeprefix("(or open ").rstrip(")")
    oauth_server.complete_login(complete)
    code, _, err = finish(proc)
    assert code == 0, err
    stored = login.stored()
    assert stored["flow"] == "device" and stored["refresh_token"]


def test_token_is_refreshed_before_expiry_and_the_refresh_token_rotates(
        code_login: Login) -> None:
    proc = code_login.start()
    browser_login(code_login, proc)
    assert finish(proc)[0] == 0
    first = code_login.stored()
    # Wait for the short-lived access token to come close to expiry (server TTL).
    time.sleep(max(0.0, first["expires_at"] - time.time() - 1.0))
    result = code_login.run("-vv", "token", "ehr", "--print-access-token")
    assert result.code == 0, result.stderr
    assert "(refresh_token) -> 200" in result.stderr
    second = code_login.stored()
    assert result.stdout.strip() == second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]  # rotated, and stored
    assert second["expires_at"] > first["expires_at"]
    # The new refresh token works in the next process too.
    code_login.expire()
    again = code_login.run("token", "ehr", "--print-access-token")
    assert again.code == 0, again.stderr
    assert code_login.stored()["refresh_token"] not in (first["refresh_token"],
                                                        second["refresh_token"])


def test_revoked_refresh_token_says_to_log_in_again(code_login: Login) -> None:
    proc = code_login.start()
    browser_login(code_login, proc)
    assert finish(proc)[0] == 0
    stored = code_login.stored()
    revoked = httpx.post(f"{code_login.server.issuer}/token/revocation", data={
        "token": stored["refresh_token"], "token_type_hint": "refresh_token",
        "client_id": NATIVE_CLIENT})
    assert revoked.status_code == 200
    code_login.expire()
    result = code_login.run("token", "ehr", "--print-access-token")
    assert result.code == 4
    assert "run `medimg login ehr`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
    assert code_login.run("token", "ehr").code == 4  # the dead login is forgotten


def test_logout_revokes_the_refresh_token_at_the_server(code_login: Login) -> None:
    proc = code_login.start()
    browser_login(code_login, proc)
    assert finish(proc)[0] == 0
    refresh = code_login.stored()["refresh_token"]
    result = code_login.run("logout", "ehr")
    assert result.code == 0, result.stderr
    assert "revoked at the server" in result.stderr
    assert testkeyring.read(code_login.store) == {}
    # The server no longer honours it.
    answer = httpx.post(code_login.server.token_url, data={
        "grant_type": "refresh_token", "refresh_token": refresh, "client_id": NATIVE_CLIENT})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_no_secret_reaches_stdout_stderr_logs_or_the_config(code_login: Login) -> None:
    proc = code_login.start("-vv")
    _, page = browser_login(code_login, proc)
    auth_code = page.url.params["code"]
    outputs = list(finish(proc)[1:])
    stored = code_login.stored()
    code_login.expire()
    for args in (("-vv", "token", "ehr"), ("-vv", "token", "ehr", "--format", "json")):
        result = code_login.run(*args)
        assert result.code == 0, result.stderr
        outputs += [result.stdout, result.stderr]
    refreshed = code_login.run("-vv", "token", "ehr", "--print-access-token")
    assert refreshed.code == 0
    outputs.append(refreshed.stderr)  # stdout is the access token, as asked
    after = code_login.stored()
    logout = code_login.run("-vv", "logout", "ehr")
    assert logout.code == 0
    outputs += [logout.stdout, logout.stderr, code_login.config.read_text()]
    text = "\n".join(outputs)
    assert "DEBUG" in text  # the -vv logs are in there
    for secret in (stored["access_token"], stored["refresh_token"], after["access_token"],
                   after["refresh_token"], auth_code, *code_login.server.secrets):
        assert secret not in text
        assert secret[:24] not in text


def test_traces_of_login_refresh_and_logout_have_the_oauth_requests_and_no_secret(
        code_login: Login, tmp_path: Path) -> None:
    traces = [tmp_path / f"{step}.trace" for step in ("login", "refresh", "logout")]
    proc = code_login.start("--trace", str(traces[0]))
    _, page = browser_login(code_login, proc)
    auth_code = page.url.params["code"]
    assert finish(proc)[0] == 0
    stored = code_login.stored()
    code_login.expire()
    refreshed = code_login.run("--trace", str(traces[1]), "token", "ehr",
                               "--print-access-token")
    assert refreshed.code == 0, refreshed.stderr
    after = code_login.stored()
    assert after["access_token"] != stored["access_token"]  # it did refresh
    assert code_login.run("--trace", str(traces[2]), "logout", "ehr").code == 0
    login_trace, refresh_trace, logout_trace = (t.read_text() for t in traces)

    token_url = code_login.server.token_url
    assert f"> POST {token_url}" in login_trace and "grant_type=authorization_code" in login_trace
    assert "code=<secret>" in login_trace and "code_verifier=<secret>" in login_trace
    assert f"> POST {token_url}" in refresh_trace
    assert "grant_type=refresh_token&refresh_token=<secret>" in refresh_trace
    assert '"refresh_token":"<secret>"' in refresh_trace
    assert "/token/revocation" in logout_trace and "token=<secret>" in logout_trace
    secrets = [auth_code, *code_login.server.secrets]
    secrets += [v for tokens in (stored, after) for k, v in tokens.items()
                if k.endswith("token") and isinstance(v, str)]
    assert len(secrets) >= 7
    text = login_trace + refresh_trace + logout_trace
    for secret in secrets:
        assert secret not in text
        assert secret[:24] not in text


def test_parallel_commands_share_one_refresh(code_login: Login) -> None:
    # A rotated refresh token works once (oidc-provider revokes the grant on reuse):
    # parallel commands must not each spend it.
    proc = code_login.start()
    browser_login(code_login, proc)
    assert finish(proc)[0] == 0
    code_login.expire()
    procs = [medimg_popen(["--config", str(code_login.config), "token", "ehr",
                           "--print-access-token"], code_login.env) for _ in range(3)]
    results = [finish(p) for p in procs]
    assert [r[0] for r in results] == [0, 0, 0], [r[2] for r in results]
    assert len({r[1] for r in results}) == 1  # all got the one renewed token
    assert results[0][1].strip() == code_login.stored()["access_token"]
