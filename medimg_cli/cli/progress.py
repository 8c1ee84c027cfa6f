"""Progress on stderr: a Rich bar on a terminal, nothing when piped or -q."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from medimg_cli.transfer import Progress, ProgressCallback

if TYPE_CHECKING:
    from medimg_cli.cli.runtime import Runtime
    from medimg_cli.transfer import TransferSummary


@contextmanager
def progress_bar(rt: Runtime, label: str) -> Iterator[ProgressCallback | None]:
    """Yield a progress callback, or None when no bar should be shown."""
    if rt.quiet or not rt.stderr_is_terminal:
        yield None
        return
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    console = Console(file=rt.stderr)
    bar = RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task = bar.add_task(label, total=None, detail="")
    started = time.monotonic()

    def update(p: Progress) -> None:
        finished = p.done + p.failed + p.warnings + p.skipped
        total = p.total if p.total is not None else (
            finished + p.remaining if p.remaining is not None else None)
        elapsed = max(time.monotonic() - started, 1e-6)
        detail = f"{p.bytes / 1e6:.1f} MB, {p.bytes / 1e6 / elapsed:.1f} MB/s"
        if p.failed:
            detail += f", {p.failed} failed"
        if p.warnings:
            detail += f", {p.warnings} warnings"
        bar.update(task, completed=finished, total=total, detail=detail)

    with bar:
        yield update


def finish(rt: Runtime, summary: TransferSummary, report: str | None) -> None:
    """Print the summary line, write --report, and fail with the summary's exit code."""
    from pathlib import Path

    from medimg_cli.errors import PartialError, RemoteError
    from medimg_cli.transfer import write_report

    if report:
        write_report(Path(report), summary)
    rt.info(summary.line())
    code = summary.exit_code
    if code == 6:
        raise PartialError(f"{summary.operation}: {summary.failed} of "
                           f"{summary.done + summary.warnings + summary.failed} failed",
                           hint="see the messages above" + (f" and {report}" if report else ""))
    if code == 5:
        raise RemoteError(f"{summary.operation}: nothing succeeded ({summary.failed} failed)",
                          hint="see the messages above" + (f" and {report}" if report else ""))
