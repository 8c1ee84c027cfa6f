"""Exceptions become exit codes in one place, with one line on stderr."""

from __future__ import annotations

import pytest
from cli_helpers import medimg

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
