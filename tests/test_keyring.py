"""Secrets in the keyring: no backend (headless hosts), the test keyring, and the real
Secret Service (gnome-keyring in a private D-Bus session).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import testkeyring
from cli_helpers import medimg, write_config
from oauth_peer import NATIVE_CLIENT, NO_KEYRING_ENV, SECRET_ENV, OAuthServer, keyring_env
from peers import in_ci

WEB = """[profiles.web]
type = "dicomweb"
url = "http://127.0.0.1:9/dicom-web"
auth = "basic"
username = "svc"
password_env = "WEB_PASSWORD"
"""


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_without_a_keyring_backend_login_names_the_fallbacks(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", WEB)
    result = medimg("login", "web", "--stdin", config=config, env=NO_KEYRING_ENV,
                    input="pw-123456789\n")
    assert result.code == 4
    line = one_line(result.stderr)
    assert "no keyring backend" in line and "Secret Service" in line
    assert "password_env" in line and "never writes secrets to a plain file" in line
    assert "pw-123456789" not in result.stdout + result.stderr


def test_without_a_keyring_backend_a_command_needing_the_secret_exits_4(
        tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", WEB)
    result = medimg("find", "web", config=config, env=NO_KEYRING_ENV)
    assert result.code == 4
    line = one_line(result.stderr)
    assert "no password for profile 'web'" in line and "WEB_PASSWORD" in line
    assert "no keyring backend" in line and "Secret Service" in line
    assert "token_env" in line


def test_without_a_keyring_backend_an_interactive_oauth_profile_exits_4(
        tmp_path: Path, oauth_server: OAuthServer) -> None:
    config = write_config(tmp_path / "c.toml", oauth_server.profile_toml(
        "ehr", flow="authorization-code", client_id=NATIVE_CLIENT))
    token = medimg("token", "ehr", "--print-access-token", config=config, env=NO_KEYRING_ENV)
    assert token.code == 4
    line = one_line(token.stderr)
    assert "no keyring backend" in line and "token_env" in line
    login = medimg("login", "ehr", "--no-browser", config=config, env=NO_KEYRING_ENV)
    assert login.code == 4
    assert "http://" not in login.stderr.split(";")[0]  # refused before any login URL
    one_line(login.stderr)


def test_basic_password_login_status_and_logout(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", WEB)
    store = tmp_path / "k.json"
    env = keyring_env(store)
    login = medimg("login", "web", "--stdin", config=config, env=env, input="pw-abc-123\n")
    assert login.code == 0, login.stderr
    assert testkeyring.read(store) == {"web:password": "pw-abc-123"}
    status = medimg("token", "web", "--format", "json", config=config, env=env)
    assert json.loads(status.stdout) == {"profile": "web", "auth": "basic",
                                         "stored_in_keyring": True}
    assert "pw-abc-123" not in status.stdout + login.stderr + config.read_text()
    assert medimg("logout", "web", config=config, env=env).code == 0
    assert testkeyring.read(store) == {}
    assert medimg("token", "web", config=config, env=env).code == 4


def test_login_refuses_dimse_profiles(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml",
                          '[profiles.pacs]\ntype = "dimse"\nhost = "h"\ncalled_aet = "A"\n')
    result = medimg("login", "pacs", config=config)
    assert result.code == 2 and "dimse profile" in result.stderr


# --------------------------------------------------------------------------
# The real Secret Service

SCRIPT = """
set -u
echo -n test-keyring-password | gnome-keyring-daemon --unlock --components=secrets >/dev/null
run() { "$PYTHON" -m medimg_cli --config "$CONFIG" "$@"; echo "EXIT $1 $?"; }
echo "$CLIENT_SECRET" | run login ehr --stdin
echo "STORED $(secret-tool lookup service medimg username ehr:oauth | head -c 1)"
run token ehr --print-access-token
run logout ehr
echo "AFTER [$(secret-tool lookup service medimg username ehr:oauth)]"
run token ehr
"""


def _require(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        message = f"{program} not found: apt-get install {package}"
        if in_ci():
            pytest.fail(message + "; under CI=true a missing peer is a failure", pytrace=False)
        pytest.skip(message)
    return found


def test_login_use_and_logout_with_the_real_secret_service(
        tmp_path: Path, oauth_server: OAuthServer) -> None:
    dbus_run_session = _require("dbus-run-session", "dbus")
    _require("gnome-keyring-daemon", "gnome-keyring")
    _require("secret-tool", "libsecret-tools")
    config = write_config(tmp_path / "c.toml", oauth_server.profile_toml(
        "ehr", client_secret_env=None))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEDIMG_", "PYTHON_KEYRING", "DBUS_", "GNOME_KEYRING"))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local/share"),
               PYTHON=sys.executable, CONFIG=str(config),
               CLIENT_SECRET=oauth_server.basic_secret)
    env.pop(SECRET_ENV, None)
    proc = subprocess.run([dbus_run_session, "--", "bash", "-c", SCRIPT], env=env,
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert "EXIT login 0" in out, out + proc.stderr
    assert "STORED {" in out  # the token set is a JSON entry in the Secret Service
    lines = out.splitlines()
    token_line = lines[lines.index("EXIT login 0") + 2]  # STORED, then the token
    assert token_line.count(".") == 2 and len(token_line) > 100
    assert "EXIT token 0" in out and "EXIT logout 0" in out
    assert "AFTER []" in out
    assert out.rstrip().endswith("EXIT token 4")
    assert oauth_server.basic_secret not in out + proc.stderr


def test_a_locked_keyring_is_one_line_and_exit_4(tmp_path: Path,
                                                 oauth_server: OAuthServer) -> None:
    config = write_config(tmp_path / "c.toml", WEB, oauth_server.profile_toml(
        "ehr", flow="authorization-code", client_id=NATIVE_CLIENT))
    env = {**keyring_env(tmp_path / "k.json"),
           "PYTHON_KEYRING_BACKEND": "testkeyring.LockedKeyring"}
    for args in (("login", "web", "--stdin"), ("find", "web"), ("token", "ehr"),
                 ("logout", "ehr")):
        result = medimg(*args, config=config, env=env, input="pw-locked-1\n")
        assert result.code == 4, (args, result.stderr)
        line = one_line(result.stderr)
        assert "keyring refused" in line and "KeyringLocked" in line and "unlock" in line
