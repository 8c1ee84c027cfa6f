"""Profiles: lookup order, validation errors that name file/profile/key, config commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from medimg_cli.cli.app import run
from medimg_cli.config import (
    ENV_CONFIG,
    load_config,
    parse_config,
    resolve_config_path,
    sample_config,
)
from medimg_cli.errors import ConfigError, ExitCode

GOOD = """
[defaults]
calling_aet = "ME"
timeout = 5

[profiles.pacs]
type = "dimse"
host = "pacs.example.org"
port = 11112
called_aet = "PACS"

[profiles.web]
type = "dicomweb"
url = "https://pacs.example.org/dicom-web/"
auth = "basic"
username = "svc"
password_env = "WEB_PW"

[profiles.ehr]
type = "fhir"
url = "https://ehr.example.org/fhir/R4"
auth = "oauth"
oauth.flow = "backend-services"
oauth.client_id = "medimg"
oauth.alg = "ES384"
"""


def errors_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("/etc/medimg.toml"))
    return info.value.message + " | " + (info.value.hint or "")


def test_valid_config_loads_all_three_profile_types() -> None:
    config = parse_config(GOOD, Path("x.toml"))
    assert config.defaults.calling_aet == "ME"
    pacs = config.profile("pacs")
    assert (pacs.host, pacs.port, pacs.called_aet, pacs.calling_aet) == (
        "pacs.example.org", 11112, "PACS", "ME")
    assert pacs.timeout == 5.0
    assert config.profile("web").endpoint == "https://pacs.example.org/dicom-web"
    assert config.profile("ehr").get("oauth") == {
        "flow": "backend-services", "client_id": "medimg", "alg": "ES384"}


def test_shipped_sample_config_is_valid_and_matches_repo_copy() -> None:
    config = parse_config(sample_config(), Path("sample"))
    assert config.profile("main-pacs").called_aet == "PACS"
    repo_copy = Path(__file__).parent.parent / "sample-config.toml"
    assert repo_copy.read_text(encoding="utf-8") == sample_config()


def test_lookup_order_flag_then_env_then_user_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    assert resolve_config_path(None) == tmp_path / "xdg" / "medimg" / "config.toml"
    monkeypatch.setenv(ENV_CONFIG, str(tmp_path / "env.toml"))
    assert resolve_config_path(None) == tmp_path / "env.toml"
    assert resolve_config_path(str(tmp_path / "flag.toml")) == tmp_path / "flag.toml"


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('port = "104"', "[profiles.p] port: expected a port number from 1 to 65535, found '104'"),
        ("port = 70000", "[profiles.p] port: expected a port number from 1 to 65535, found 70000"),
        ('called_aet = "WAY_TOO_LONG_AE_TITLE"', "[profiles.p] called_aet: expected an AE title"),
        ('hots = "x"', "[profiles.p] hots: unknown key | did you mean 'host'?"),
        ("tls = 1", "[profiles.p] tls: expected true or false, found 1"),
        ('vendor = "acme"', "[profiles.p] vendor: expected one of generic, ge-centricity"),
        ("tls_min_version = 1.25", "[profiles.p] tls_min_version: expected a TLS version"),
        ("tls_min_version = true", "[profiles.p] tls_min_version: expected a TLS version"),
        ('tls_verify = "false"', "[profiles.p] tls_verify: expected true or false, found 'false'"),
        ("receive_tls = 1", "[profiles.p] receive_tls: expected true or false, found 1"),
        ("ca_file = 5", "[profiles.p] ca_file: expected a non-empty string, found 5"),
        ('key_file = ""', "[profiles.p] key_file: expected a non-empty string, found ''"),
        ("user_identity = true", "[profiles.p] user_identity: expected one of username,"),
        ('passcode_env = "1BAD"', "[profiles.p] passcode_env: expected the name of an environ"),
        ('identity_response = "no"', "[profiles.p] identity_response: expected true or false"),
        ("vendor = 3", "[profiles.p] vendor: expected one of generic, ge-centricity"),
    ],
)
def test_bad_key_errors_name_file_profile_key_expected_and_found(
    snippet: str, expected: str
) -> None:
    aet = "" if snippet.startswith("called_aet") else 'called_aet = "A"\n'
    text = f'[profiles.p]\ntype = "dimse"\nhost = "h"\n{aet}{snippet}\n'
    message = errors_of(text)
    assert message.startswith("/etc/medimg.toml: [profiles.p]")
    assert expected in message


def test_missing_required_key_and_bad_type_are_named() -> None:
    no_aet = '[profiles.p]\ntype = "dimse"\nhost = "h"\n'
    assert "[profiles.p] called_aet: missing" in errors_of(no_aet)
    assert "[profiles.p] type: expected one of dimse, dicomweb, fhir, found 'dicom'" in errors_of(
        '[profiles.p]\ntype = "dicom"\n')
    assert "found nothing" in errors_of('[profiles.p]\nhost = "h"\n')
    assert "url: expected an http:// or https:// URL" in errors_of(
        '[profiles.w]\ntype = "dicomweb"\nurl = "pacs:8080"\n')


@pytest.mark.parametrize(
    "snippet", ['password = "hunter2"', 'oauth.client_secret = "s3cr3t"', 'token = "abc"']
)
def test_secret_in_config_is_refused_with_the_proper_way(snippet: str) -> None:
    text = f'[profiles.w]\ntype = "dicomweb"\nurl = "https://x"\nauth = "oauth"\n{snippet}\n'
    message = errors_of(text)
    assert "secrets are not kept in the config file" in message
    assert "medimg login w" in message and "_env" in message
    assert "hunter2" not in message and "s3cr3t" not in message


def test_invalid_toml_names_file_and_line() -> None:
    message = errors_of('[profiles.p]\ntype = "dimse"\nhost = \n')
    assert "/etc/medimg.toml: invalid TOML" in message and "line 3" in message


def test_unknown_profile_lists_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        config.profile("pac")
    assert "unknown profile 'pac'" in info.value.message
    assert "known: ehr, pacs, web" in info.value.message
    assert "did you mean 'pacs'" in (info.value.hint or "")


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_config_init_writes_starter_and_never_overwrites_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sub" / "config.toml"
    assert run(["--config", str(path), "config", "init"]) == 0
    assert path.read_text(encoding="utf-8") == sample_config()
    path.write_text(GOOD)
    assert run(["--config", str(path), "config", "init"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "exists already" in err and "--force" in err
    assert path.read_text() == GOOD  # untouched
    assert run(["--config", str(path), "config", "init", "--force"]) == 0
    assert path.read_text(encoding="utf-8") == sample_config()
    assert (tmp_path / "sub" / "config.toml.bak").read_text() == GOOD


def test_config_validate_reports_ok_or_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    assert run(["--config", str(path), "config", "validate"]) == 0
    assert "OK, 3 profiles" in capsys.readouterr().out
    path.write_text(GOOD.replace("port = 11112", "port = -1"))
    assert run(["--config", str(path), "config", "validate"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[profiles.pacs] port" in err


def test_config_show_fills_defaults_and_shows_only_secret_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    monkeypatch.setenv("WEB_PW", "hunter2")
    assert run(["--config", str(path), "config", "show", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    import json

    data = json.loads(out)
    assert data["profiles"]["pacs"]["calling_aet"] == "ME"
    assert data["profiles"]["pacs"]["timeout"] == 5.0
    assert data["profiles"]["web"]["password_env"] == "WEB_PW (set)"


def test_profiles_lists_name_type_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    assert run(["--config", str(path), "profiles", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "name,type,endpoint,vendor"
    assert "pacs,dimse,PACS@pacs.example.org:11112," in lines


def test_command_that_does_not_fit_profile_type_names_what_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    assert run(["--config", str(path), "find", "ehr"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "a fhir profile" in err and "fhir patient" in err
