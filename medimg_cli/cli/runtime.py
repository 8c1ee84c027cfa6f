"""The runtime a command sees: streams, terminal flags, verbosity, config.

Commands never look at sys.stdout or the environment directly; tests swap
in their own Runtime to check piped versus terminal behaviour.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from medimg_cli.config import Config, Profile


@dataclass
class Runtime:
    """Where output goes and how much of it, plus the loaded config."""

    config_path: str | None = None
    verbose: int = 0
    quiet: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    _config: Config | None = None

    @property
    def stdout_is_terminal(self) -> bool:
        return _isatty(self.stdout)

    @property
    def stderr_is_terminal(self) -> bool:
        return _isatty(self.stderr)

    @property
    def color(self) -> bool:
        return self.stdout_is_terminal and "NO_COLOR" not in os.environ

    def default_format(self) -> str:
        """`table` on a terminal, `jsonl` when stdout is piped (DESIGN.md, Output)."""
        return "table" if self.stdout_is_terminal else "jsonl"

    def config(self) -> Config:
        from medimg_cli.config import load_config

        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def profile(self, name: str) -> Profile:
        return self.config().profile(name)

    def info(self, message: str) -> None:
        """A diagnostic for people, on stderr; silenced by -q."""
        if not self.quiet:
            self.stderr.write(message + "\n")
            self.stderr.flush()

    def detail(self, message: str, level: int = 1) -> None:
        """Extra detail shown with -v (level 1) or -vv (level 2)."""
        if self.verbose >= level and not self.quiet:
            self.stderr.write(message + "\n")
            self.stderr.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
