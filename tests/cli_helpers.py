"""Run medimg as users and scripts do: a real process, real exit code, piped stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEDIMG = [sys.executable, "-m", "medimg_cli"]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def jsonl(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def medimg(*args: str, config: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 120, input: str | None = None) -> Result:
    """Run `medimg ARGS` in a subprocess with stdout and stderr piped."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIMG_")}
    full_env.update(env or {})
    cmd = [*MEDIMG]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=full_env, timeout=timeout,
        input=input,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def write_config(path: Path, *snippets: str, defaults: str = "") -> Path:
    """A config file made of TOML snippets."""
    text = ("[defaults]\n" + defaults + "\n" if defaults else "") + "\n".join(snippets)
    path.write_text(text, encoding="utf-8")
    return path


def value(record: dict[str, Any], hex_tag: str) -> Any:
    """The first value of an element of a DICOM JSON record (PN as Alphabetic)."""
    element = record.get(hex_tag) or {}
    values = element.get("Value") or [None]
    first = values[0]
    if isinstance(first, dict) and element.get("vr") == "PN":
        return first.get("Alphabetic")
    return first
