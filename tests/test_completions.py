"""Shell completion: the shipped scripts are current and profiles are offered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_not_stale(shell: str) -> None:
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    fresh = subprocess.run(
        [str(Path(sys.executable).parent / "medimg"), "--show-completion", shell],
        capture_output=True, text=True, env=env, check=True,
    ).stdout
    shipped = (REPO / "completions" / f"medimg.{shell}").read_text()
    assert fresh.strip() == shipped.strip(), "completions/ is stale: run `make completions`"


def complete(words: str, cword: int, config: Path, *extra: str) -> list[str]:
    env = {
        **os.environ,
        "_MEDIMG_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
        "MEDIMG_CONFIG": str(config),
    }
    out = subprocess.run([sys.executable, "-m", "medimg_cli"], capture_output=True, text=True,
                         env=env).stdout
    return out.split()


def test_profile_argument_completes_profile_names(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[profiles.main-pacs]\ntype = "dimse"\nhost = "h"\ncalled_aet = "A"\n'
        '[profiles.mini]\ntype = "dimse"\nhost = "h"\ncalled_aet = "A"\n'
        '[profiles.web]\ntype = "dicomweb"\nurl = "http://h"\n'
    )
    assert complete("medimg echo ", 2, config) == ["main-pacs", "mini", "web"]
    assert complete("medimg find m", 2, config) == ["main-pacs", "mini"]
