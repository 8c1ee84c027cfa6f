"""Start-up stays fast: the CLI module imports no protocol library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("pynetdicom", "pydicom", "httpx", "keyring", "cryptography", "numpy", "requests",
         "pydantic")


def imported_after(code: str) -> set[str]:
    probe = (
        f"{code}\nimport sys\n"
        f"print('LOADED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("LOADED:"))
    return {m for m in line.removeprefix("LOADED:").split(",") if m}


def test_importing_the_cli_loads_no_protocol_library() -> None:
    assert imported_after("import medimg_cli, medimg_cli.cli.app") == set()


def test_help_and_completion_load_no_protocol_library(tmp_path: Path) -> None:
    help_run = (
        "from medimg_cli.cli.app import run\nimport io, contextlib\n"
        "with contextlib.redirect_stdout(io.StringIO()): run(['--help'])"
    )
    assert imported_after(help_run) == set()
    config = tmp_path / "c.toml"
    config.write_text('[profiles.p]\ntype = "dimse"\nhost = "h"\ncalled_aet = "A"\n')
    completion = (
        "import os\n"
        f"os.environ.update(_MEDIMG_COMPLETE='complete_bash', COMP_WORDS='medimg echo ',"
        f" COMP_CWORD='2', MEDIMG_CONFIG={str(config)!r})\n"
        "from medimg_cli.cli.app import app\n"
        "try:\n    app(prog_name='medimg')\nexcept SystemExit:\n    pass"
    )
    assert imported_after(completion) == set()


def test_parsing_a_command_line_loads_no_validation_library(tmp_path: Path) -> None:
    # typer 0.29 coerces every option through pydantic: +60 ms on each command run.
    config = tmp_path / "c.toml"
    config.write_text('[profiles.p]\ntype = "dicomweb"\nurl = "http://127.0.0.1:9/"\n')
    run_find = (
        "from medimg_cli.cli.app import run\nimport io, contextlib\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):"
        f"\n    run(['--config', {str(config)!r}, 'find', 'p', '--limit', '3', '--name', 'X*',"
        " '--format', 'nope'])"
    )
    assert "pydantic" not in imported_after(run_find)


def test_medimg_does_not_depend_on_numpy_or_requests() -> None:
    from importlib.metadata import requires

    deps = " ".join(requires("medimg") or []).lower()
    assert "numpy" not in deps and "requests" not in deps
