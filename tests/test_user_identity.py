"""A-ASSOCIATE User Identity negotiation against a checking pynetdicom SCP and DCMTK."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import medimg, write_config
from peers import LOOPBACK, Storescp, free_port, run_dcmtk

USER = "alice"
PASSCODE = "s3cret-Passcode-42"
JWT = "eyJhbGciOiJSUzM4NCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
SERVER_RESPONSE = b"welcome-alice"


@dataclass
class IdentityScp:
    """A real pynetdicom AE on loopback whose EVT_USER_ID handler checks the identity."""

    port: int
    aet: str = "IDSCP"
    seen: list[tuple[int, bytes, bytes | None]] = field(default_factory=list)

    def profile(self, name: str = "pacs", **keys: Any) -> str:
        lines = [f"[profiles.{name}]", 'type = "dimse"', f'host = "{LOOPBACK}"',
                 f"port = {self.port}", f'called_aet = "{self.aet}"', "timeout = 5"]
        for key, value in keys.items():
            rendered = ("true" if value else "false") if isinstance(value, bool) else f'"{value}"'
            lines.append(f"{key} = {rendered}")
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def identity_scp() -> Iterator[IdentityScp]:
    from pynetdicom import AE, evt

    scp = IdentityScp(port=free_port())
    lock = threading.Lock()

    def check(event: Any) -> tuple[bool, bytes | None]:
        kind, primary, secondary = event.user_id_type, event.primary_field, event.secondary_field
        with lock:
            scp.seen.append((kind, primary, secondary))
        if kind == 1:
            return primary == USER.encode(), None
        if kind == 2:
            return primary == USER.encode() and secondary == PASSCODE.encode(), None
        if kind == 5:
            ok = primary == JWT.encode()
            return ok, SERVER_RESPONSE if ok else None
        return False, None

    ae = AE(ae_title=scp.aet)
    ae.add_supported_context("1.2.840.10008.1.1", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.2",
                             ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
    server = ae.start_server((LOOPBACK, scp.port), block=False,
                             evt_handlers=[(evt.EVT_USER_ID, check),
                                           (evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        yield scp
    finally:
        server.shutdown()


def test_username_and_passcode_from_the_environment_are_accepted(
    tmp_path: Path, identity_scp: IdentityScp
) -> None:
    config = write_config(tmp_path / "c.toml", identity_scp.profile(
        user_identity="username-passcode", username=USER, passcode_env="PACS_PASSCODE",
        identity_response=True))
    before = len(identity_scp.seen)
    result = medimg("echo", "pacs", "--format", "table", config=config,
                    env={"PACS_PASSCODE": PASSCODE})
    assert result.code == 0, result.stderr
    assert identity_scp.seen[before:] == [(2, USER.encode(), PASSCODE.encode())]
    # pynetdicom answers positively only for Kerberos, SAML and JWT: reported as such.
    assert "user identity: association accepted with username and passcode 'alice', but " \
           "the peer sent no positive response" in result.stdout
    assert PASSCODE not in result.stdout + result.stderr


def test_wrong_passcode_is_rejected_with_a_diagnosis_and_never_shown(
    tmp_path: Path, identity_scp: IdentityScp
) -> None:
    config = write_config(tmp_path / "c.toml", identity_scp.profile(
        user_identity="username-passcode", username=USER, passcode_env="PACS_PASSCODE"))
    wrong = "wrong-Passcode-99"
    result = medimg("-vv", "echo", "pacs", config=config, env={"PACS_PASSCODE": wrong})
    assert result.code == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("medimg: association rejected")
    assert "we sent a user identity (username and passcode 'alice')" in last
    assert "check the username and the passcode" in last
    assert wrong not in result.stdout + result.stderr
    # -vv shows pynetdicom's A-ASSOCIATE-RQ dump, with the passcode blanked.
    assert "Username: [alice]" in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "Password:" in line]
    assert line.rstrip().endswith("Password: <secret>")


def test_passcode_is_absent_from_vv_logs_on_success(
    tmp_path: Path, identity_scp: IdentityScp
) -> None:
    config = write_config(tmp_path / "c.toml", identity_scp.profile(
        user_identity="username-passcode", username=USER, passcode_env="PACS_PASSCODE"))
    result = medimg("-vv", "echo", "pacs", config=config, env={"PACS_PASSCODE": PASSCODE})
    assert result.code == 0, result.stderr
    assert "Username: [alice]" in result.stderr  # the dump is there ...
    assert PASSCODE not in result.stdout + result.stderr  # ... without the passcode
    assert "user identity:" in result.stderr


def test_jwt_from_a_file_gets_a_positive_response(
    tmp_path: Path, identity_scp: IdentityScp
) -> None:
    token = tmp_path / "token.jwt"
    token.write_text(JWT + "\n")
    config = write_config(tmp_path / "c.toml", identity_scp.profile(
        user_identity="jwt", identity_file=str(token), identity_response=True))
    result = medimg("echo", "pacs", "--format", "json", config=config)
    assert result.code == 0, result.stderr
    import json

    answer = json.loads(result.stdout)["association"]["user_identity"]
    assert answer["positive_response"] is True and answer["response_requested"] is True
    assert f"positive response ({len(SERVER_RESPONSE)} bytes)" in answer["summary"]
    assert JWT not in result.stdout + result.stderr


def test_options_override_the_profile(tmp_path: Path, identity_scp: IdentityScp) -> None:
    config = write_config(tmp_path / "c.toml", identity_scp.profile())
    result = medimg("echo", "pacs", "--format", "table", "--user-identity", "username",
                    "--username", USER, "--identity-response", config=config)
    assert result.code == 0, result.stderr
    assert identity_scp.seen[-1][:2] == (1, USER.encode())
    result = medimg("echo", "pacs", "--user-identity", "username", "--username", "mallory",
                    config=config)
    assert result.code == 4 and "check the username" in result.stderr


def test_missing_passcode_names_where_it_may_come_from(
    tmp_path: Path, identity_scp: IdentityScp
) -> None:
    config = write_config(tmp_path / "c.toml", identity_scp.profile(
        user_identity="username-passcode", username=USER, passcode_env="PACS_PASSCODE"))
    result = medimg("echo", "pacs", config=config,
                    env={"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})
    assert result.code == 4, result.stderr
    assert "no DICOM user identity passcode for profile 'pacs'" in result.stderr
    assert "PACS_PASSCODE" in result.stderr


def test_passcode_in_the_config_file_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", IdentityScp(port=104).profile(
        user_identity="username-passcode", username=USER, passcode=PASSCODE))
    result = medimg("echo", "pacs", config=config)
    assert result.code == 2
    assert "secrets are not kept in the config file" in result.stderr
    assert PASSCODE not in result.stderr


def test_dcmtk_storescu_identity_meets_the_same_checks(
    tmp_path: Path, identity_scp: IdentityScp
) -> None:
    """The reference: DCMTK's storescu --user/--password against the same SCP."""
    from dicom_data import generate

    (path, *_) = generate(tmp_path / "data").paths
    base = ["storescu", "-to", "5", "-aec", identity_scp.aet, "--user", USER]
    ok = run_dcmtk([*base, "--password", PASSCODE, LOOPBACK, str(identity_scp.port), str(path)])
    assert ok.returncode == 0, ok.stderr
    assert identity_scp.seen[-1] == (2, USER.encode(), PASSCODE.encode())
    bad = run_dcmtk([*base, "--password", "nope", LOOPBACK, str(identity_scp.port), str(path)])
    assert bad.returncode != 0
    assert "Association Rejected" in bad.stdout + bad.stderr


def test_dcmtk_storescp_accepts_an_identity_without_a_response(
    tmp_path: Path, storescp: Storescp
) -> None:
    config = write_config(tmp_path / "c.toml", storescp.profile_toml(
        "pacs", user_identity="username-passcode", username=USER, passcode_env="PACS_PASSCODE",
        identity_response=True))
    result = medimg("echo", "pacs", "--format", "table", config=config,
                    env={"PACS_PASSCODE": PASSCODE})
    assert result.code == 0, result.stderr
    assert "the peer sent no positive response" in result.stdout


def test_passcode_is_absent_from_a_trace(tmp_path: Path, identity_scp: IdentityScp) -> None:
    config = write_config(tmp_path / "c.toml", identity_scp.profile(
        user_identity="username-passcode", username=USER, passcode_env="PACS_PASSCODE"))
    trace = tmp_path / "t.trace"
    result = medimg("--trace", str(trace), "echo", "pacs", config=config,
                    env={"PACS_PASSCODE": PASSCODE})
    assert result.code == 0, result.stderr
    text = trace.read_text()
    assert "user identity: username and passcode" in text  # the negotiation is traced ...
    assert PASSCODE not in text  # ... without the passcode


def test_config_validate_wants_a_username_for_username_identities(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", IdentityScp(port=104).profile(
        user_identity="username-passcode", passcode_env="PACS_PASSCODE"))
    result = medimg("config", "validate", config=config)
    assert result.code == 2
    assert "[profiles.pacs] username: missing" in result.stderr
    bad = write_config(tmp_path / "d.toml", IdentityScp(port=104).profile(
        user_identity="kerberos", username=USER))
    result = medimg("config", "validate", config=bad)
    assert result.code == 2 and "user_identity: expected one of username" in result.stderr


def test_login_stores_the_passcode_in_the_keyring_for_echo(
    tmp_path: Path, identity_scp: IdentityScp
) -> None:
    from oauth_peer import keyring_env

    env = keyring_env(tmp_path / "keyring.json")
    config = write_config(tmp_path / "c.toml", identity_scp.profile(
        user_identity="username-passcode", username=USER))
    login = medimg("login", "pacs", "--stdin", config=config, env=env, input=PASSCODE + "\n")
    assert login.code == 0, login.stderr
    assert "Stored the passcode of profile 'pacs'" in login.stderr
    before = len(identity_scp.seen)
    result = medimg("echo", "pacs", config=config, env=env)
    assert result.code == 0, result.stderr
    assert identity_scp.seen[before:] == [(2, USER.encode(), PASSCODE.encode())]
    assert PASSCODE not in login.stdout + login.stderr + result.stdout + result.stderr
