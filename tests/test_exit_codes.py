"""Exceptions become exit codes in one place, with one line on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import medimg, write_config

from medimg_cli import __version__
from medimg_cli.cli import app as app_module
from medimg_cli.errors import (
    ConfigError,
    ConnectError,
    ExitCode,
    Interrupted,
    MedimgError,
    PartialError,
    RefusedError,
    RemoteError,
    UsageError,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError("x"), 2),
        (ConfigError("x"), 2),
        (ConnectError("x"), 3),
        (RefusedError("x"), 4),
        (RemoteError("x"), 5),
        (PartialError("x"), 6),
        (Interrupted("x"), 130),
        (MedimgError("x"), 1),
    ],
)
def test_each_error_class_has_its_exit_code(error: MedimgError, code: int) -> None:
    assert error.exit_code == code


def test_errors_print_one_line_with_the_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RefusedError("association rejected", hint="check called_aet")

    monkeypatch.setattr(app_module, "app", boom)
    assert app_module.run([]) == ExitCode.REFUSED
    assert capsys.readouterr().err == "medimg: association rejected; check called_aet\n"


def test_a_bug_is_exit_1_with_the_hint_to_rerun_verbose(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(app_module, "app", boom)
    assert app_module.run([]) == ExitCode.INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: KeyError" in err and "-vv" in err


def test_ctrl_c_is_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import signal

    def interrupted(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(app_module, "app", interrupted)
    assert app_module.run([]) == ExitCode.INTERRUPTED
    assert "interrupted" in capsys.readouterr().err


def test_bad_option_is_a_usage_error() -> None:
    result = medimg("find", "x", "--no-such-option")
    assert result.code == 2
    assert "No such option: --no-such-option" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_python_m() -> None:
    result = medimg("--version")
    assert (result.code, result.stdout) == (0, f"medimg {__version__}\n")


def test_every_command_has_working_help() -> None:
    """Help text goes through Rich markup: a stray `[/...]` breaks it at run time."""
    from medimg_cli.cli.app import app

    commands = [c.name for c in app.registered_commands if c.name]
    groups = [g.name for g in app.registered_groups if g.name]
    assert {"echo", "find", "move", "get", "stow", "wadoget"} <= set(commands)
    for name in [*commands, *groups, "config init", "config show"]:
        result = medimg(*name.split(), "--help")
        assert result.code == 0, f"{name} --help: {result.stderr}"
        assert "Usage: medimg" in result.stdout


# --------------------------------------------------------------------------
# Bad input to the newer commands: exit code, one `medimg:` line, nothing on
# stdout, nothing on disk damaged. None of these needs a peer.


def one_line_error(result: object) -> str:
    from cli_helpers import Result

    assert isinstance(result, Result)
    assert result.stdout == "", result.stdout
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("medimg: "), result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def _backend_services_config(tmp_path: Path, key_file: Path) -> Path:
    return write_config(tmp_path / "c.toml", f"""[profiles.ehr]
type = "fhir"
url = "http://127.0.0.1:9/fhir"
auth = "oauth"
[profiles.ehr.oauth]
flow = "backend-services"
client_id = "c"
token_url = "http://127.0.0.1:9/token"
private_key_file = {json.dumps(str(key_file))}
""")


@pytest.mark.parametrize(("where", "expected"), [
    ("folder", "is a folder; name the key file to create in it"),
    ("under-a-file", "cannot write the key pair at oauth.private_key_file"),
])
def test_keygen_where_no_key_file_can_be_written_is_a_usage_error(
    tmp_path: Path, where: str, expected: str
) -> None:
    (tmp_path / "notes.txt").write_text("keep me\n")
    if where == "folder":
        key_file = tmp_path / "keys"
        key_file.mkdir()
    else:
        key_file = tmp_path / "notes.txt" / "k.pem"
    config = _backend_services_config(tmp_path, key_file)
    result = medimg("login", "ehr", "--keygen", "--force", config=config)
    assert result.code == 2
    assert expected in one_line_error(result)
    assert (tmp_path / "notes.txt").read_text() == "keep me\n"
    assert not list(tmp_path.glob("*.tmp"))  # no stray copy of a private key


def test_trace_never_overwrites_a_file_that_is_not_a_medimg_trace(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", "")
    notes = tmp_path / "notes.txt"
    notes.write_text("important\n")
    result = medimg("--trace", str(notes), "profiles", config=config)
    assert result.code == 2
    assert "exists and is not a medimg trace; not overwriting it" in one_line_error(result)
    assert notes.read_text() == "important\n"
    # An earlier trace is replaced, as curl --trace does.
    trace = tmp_path / "t.log"
    for _ in range(2):
        assert medimg("--trace", str(trace), "profiles", config=config).code == 0
    assert trace.read_text().count("# medimg ") == 1


_HTTP_PROFILES = """[profiles.web]
type = "dicomweb"
url = "http://127.0.0.1:9/dicom-web"
[profiles.ehr]
type = "fhir"
url = "http://127.0.0.1:9/fhir"
[profiles.pacs]
type = "dimse"
host = "127.0.0.1"
port = 9
called_aet = "PACS"
"""


@pytest.mark.parametrize(("args", "expected"), [
    (["web", "--aet", "ME", "--timing"], "--aet, --timing: only for DICOM associations; 'web'"),
    (["ehr", "--user-identity", "username", "--username", "u"],
     "--user-identity, --username: only for DICOM associations; 'ehr' is a fhir profile"),
    (["ehr", "--no-identity-response"], "--[no-]identity-response: only for DICOM"),
    (["web", "--move-check"], "--probe and --move-check need a dimse profile"),
    (["pacs", "--port", "11113"], "--port goes with --move-check"),
])
def test_echo_options_that_do_not_apply_are_a_usage_error_not_ignored(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = medimg("echo", *args, config=write_config(tmp_path / "c.toml", _HTTP_PROFILES))
    assert result.code == 2
    assert expected in one_line_error(result)


@pytest.mark.parametrize(("args", "expected"), [
    (["fhir", "studies", "ehr"], "medimg: Missing option '--patient' / '-p'; see `medimg fhir "
     "studies --help`"),
    (["fhir", "report"], "medimg: Missing argument 'PROFILE'; see `medimg fhir report --help`"),
    (["echo", "pacs", "--port", "99999"], "medimg: Invalid value for '--port': 99999 is not in "
     "the range 0<=x<=65535; see `medimg echo --help`"),
    (["profiles", "--vendors", "x"], "medimg: Got unexpected extra argument(s) (x)"),
    (["nosuchcommand"], "medimg: No such command 'nosuchcommand'; see `medimg --help`"),
])
def test_option_parsing_errors_are_one_line_too(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = medimg(*args, config=write_config(tmp_path / "c.toml", _HTTP_PROFILES))
    assert result.code == 2
    assert one_line_error(result).startswith(expected)


def test_sandbox_data_folder_whose_index_cannot_be_opened_is_a_usage_error(
    tmp_path: Path,
) -> None:
    """What a read-only data folder gives (root ignores permissions, so the test puts a
    folder where the index file goes: sqlite cannot open it either)."""
    data = tmp_path / "data"
    (data / "index.sqlite").mkdir(parents=True)
    result = medimg("sandbox", "--data", str(data), "--dicom-port", "1", "--http-port", "2",
                    config=tmp_path / "c.toml")
    assert result.code == 2
    line = one_line_error(result)
    assert f"cannot use '{data}' as the sandbox's data folder: cannot open its index" in line
    assert "choose another with --data" in line


def test_logout_and_token_work_on_the_dimse_identity_that_login_stored(tmp_path: Path) -> None:
    from oauth_peer import keyring_env

    env = keyring_env(tmp_path / "keyring.json")
    config = write_config(tmp_path / "c.toml", _HTTP_PROFILES.replace(
        'called_aet = "PACS"', 'called_aet = "PACS"\nuser_identity = "username-passcode"\n'
        'username = "u"'))
    login = medimg("login", "pacs", "--stdin", config=config, env=env, input="pw\n")
    assert login.code == 0, login.stderr
    token = medimg("token", "pacs", config=config, env=env)
    assert (token.code, token.stdout) == (0, "pacs: passcode stored in the keyring\n")
    logout = medimg("logout", "pacs", config=config, env=env)
    assert logout.code == 0 and "Removed the passcode of 'pacs'" in logout.stderr
    assert medimg("token", "pacs", config=config, env=env).code == 4
    assert "pw" not in login.stderr + token.stdout + logout.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (["login", "pacs"], "'pacs' is a dimse profile with no user_identity; set user_identity"),
    (["logout", "pacs"], "'pacs' is a dimse profile with no user_identity"),
    (["login", "web", "--keygen"], "--keygen, --alg and --force are for oauth.flow = "
     "\"backend-services\"; profile 'web' uses basic"),
])
def test_login_on_a_profile_without_that_kind_of_login_says_what_would_need_one(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    config = write_config(tmp_path / "c.toml", _HTTP_PROFILES.replace(
        'url = "http://127.0.0.1:9/dicom-web"', 'url = "http://127.0.0.1:9/dicom-web"\n'
        'auth = "basic"\nusername = "u"'))
    result = medimg(*args, config=config)
    assert result.code == 2
    assert expected in one_line_error(result)


@pytest.mark.parametrize(("command", "keys", "expected"), [
    ("echo", 'ca_file = "{missing}"', "ca_file {missing} does not exist or is not a file"),
    ("echo", 'ca_file = "{tmp}"', "ca_file {tmp} does not exist or is not a file"),
    ("echo", 'ca_file = "{notes}"', "ca_file {notes} holds no usable certificate"),
    ("echo", 'cert_file = "{notes}"', "cannot use cert_file {notes} with key_file (in cert_f"),
    ("echo", 'key_file = "{notes}"', "key_file without cert_file; set cert_file"),
    ("login", 'ca_file = "{notes}"\nauth = "oauth"\noauth.flow = "client-credentials"\n'
     'oauth.client_id = "c"', "ca_file {notes} holds no usable certificate"),
    ("fhir patient", 'ca_file = "{notes}"\nauth = "oauth"\noauth.flow = "client-credentials"\n'
     'oauth.client_id = "c"', "ca_file {notes} holds no usable certificate"),
])
def test_bad_tls_files_of_an_http_profile_are_a_config_error(
    tmp_path: Path, command: str, keys: str, expected: str
) -> None:
    names = {"missing": str(tmp_path / "no-such.pem"), "tmp": str(tmp_path),
             "notes": str(tmp_path / "notes.txt")}
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    config = write_config(tmp_path / "c.toml", '[profiles.ehr]\ntype = "fhir"\n'
                          'url = "https://127.0.0.1:9/fhir"\n' + keys.format(**names))
    result = medimg(*command.split(), "ehr", config=config)
    assert result.code == 2
    assert f"medimg: profile 'ehr': {expected.format(**names)}" in one_line_error(result)


@pytest.mark.parametrize(("keys", "expected"), [
    ('ca_file = "ca.pem"\ntls_verify = false', "sets ca_file, tls_verify but not tls = true: "
     "the association is plain DICOM (set tls = true for DICOM TLS)"),
    ('username = "u"\nidentity_file = "t.jwt"', "sets username, identity_file but no "
     "user_identity: the association carries no user identity"),
])
def test_keys_that_would_be_ignored_are_named_in_a_warning(
    tmp_path: Path, keys: str, expected: str
) -> None:
    config = write_config(tmp_path / "c.toml", _HTTP_PROFILES.replace(
        'called_aet = "PACS"', f'called_aet = "PACS"\n{keys}'))
    result = medimg("echo", "pacs", "--timeout", "5", config=config)
    assert result.code == 3  # nothing listens on port 9
    warning, error = result.stderr.splitlines()
    assert warning.startswith(f"medimg: warning: profile 'pacs' {expected}")
    assert error.startswith("medimg: ")
