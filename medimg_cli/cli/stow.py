"""`medimg stow PROFILE PATH...`: send DICOM files and folders to a PACS."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from medimg_cli.cli.dimse_common import dimse_target
from medimg_cli.cli.options import (
    CalledAetOpt,
    CallingAetOpt,
    ProfileArg,
    TimeoutOpt,
    require_type,
    runtime,
)


def stow_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    paths: Annotated[list[Path], typer.Argument(
        metavar="PATH...", help="DICOM files, or directories (read recursively).")],
    *,
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=32, help="Associations "
                                          "at once, each in its own process.")] = 1,
    report: Annotated[str | None, typer.Option("--report", metavar="FILE", show_default=False,
                                               help="Write the summary as JSON.")] = None,
    timeout: TimeoutOpt = None,
    calling_aet: CallingAetOpt = None,
    called_aet: CalledAetOpt = None,
) -> None:
    """Send DICOM files to a PACS (C-STORE); files that are not DICOM are skipped.

    Piped, stdout gets a JSON line per file: path, sop_instance_uid, status
    (stored, warning, failed, skipped), code (DIMSE status), message.
    """
    from medimg_cli.cli.progress import finish, progress_bar
    from medimg_cli.dimse.store import FileResult, stow

    rt = runtime(ctx)
    profile = rt.profile(profile_name)
    require_type(profile, "stow", ("dimse",))
    target = dimse_target(profile, calling_aet=calling_aet, called_aet=called_aet, timeout=timeout)
    with progress_bar(rt, "stow") as bar:
        err = sys.stderr if bar else rt.stderr  # Rich wraps sys.stderr to print above the bar

        def show(result: FileResult) -> None:
            if not rt.stdout_is_terminal:
                print(json.dumps(result.as_json(), ensure_ascii=False), file=rt.stdout, flush=True)
            if result.status == "failed" or (result.status != "stored" and not rt.quiet):
                print(f"{result.status}: {result.path}: {result.message}", file=err, flush=True)

        summary = stow(target, paths, parallel=parallel, progress=bar, on_result=show)
    finish(rt, summary, report)
