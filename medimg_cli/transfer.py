"""What move, get and stow share: progress events and the final summary.

Protocol code reports progress through a callback taking `Progress` and
returns a `TransferSummary`; the command line renders both. The summary's
`exit_code` is the contract of DESIGN.md: 0 all done, 6 some failed, 5 all
failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medimg_cli.errors import ExitCode


@dataclass
class Progress:
    """Counts so far; `total` is None while unknown."""

    done: int = 0
    failed: int = 0
    warnings: int = 0
    skipped: int = 0
    remaining: int | None = None
    total: int | None = None
    bytes: int = 0
    current: str = ""


ProgressCallback = Callable[[Progress], None]


@dataclass
class ItemResult:
    """One unit of a transfer: a study (move/get) or a file (stow)."""

    name: str
    requested: int = 0
    done: int = 0
    warnings: int = 0
    failed: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0
    status: str = ""
    message: str = ""


@dataclass
class TransferSummary:
    """The end of a long operation: counts, bytes, seconds, and each item."""

    operation: str
    profile: str
    done: int = 0
    warnings: int = 0
    failed: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0
    items: list[ItemResult] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic, repr=False)

    def finish(self) -> TransferSummary:
        self.seconds = time.monotonic() - self.started
        return self

    @property
    def exit_code(self) -> ExitCode:
        if self.failed == 0:
            return ExitCode.OK
        return ExitCode.PARTIAL if self.done + self.warnings > 0 else ExitCode.REMOTE

    def line(self) -> str:
        """One line for people: `12 done, 0 warnings, 1 failed, 3 skipped; 4.2 MB in 1.3 s`."""
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (
            f"{self.operation}: {self.done} done, {self.warnings} warnings, {self.failed} failed, "
            f"{self.skipped} skipped; {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s"
            + (f" ({rate:.1f} MB/s)" if self.bytes else "")
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("started")
        data["seconds"] = round(self.seconds, 3)
        data["exit_code"] = int(self.exit_code)
        for item in data["items"]:
            item["seconds"] = round(item["seconds"], 3)
        return data


def write_report(path: Path, summary: TransferSummary) -> None:
    """`--report FILE`: the summary as JSON, written atomically."""
    from medimg_cli.storage import write_atomic

    text = json.dumps(summary.as_dict(), indent=2, ensure_ascii=False) + "\n"
    write_atomic(path, text.encode("utf-8"))
