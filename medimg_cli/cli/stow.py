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
                                          "at once, each in its own process (DICOMweb: "
                                          "requests at once).")] = 1,
    report: Annotated[str | None, typer.Option("--report", metavar="FILE", show_default=False,
                                               help="Write the summary as JSON.")] = None,
    study: Annotated[str | None, typer.Option(
        "--study", metavar="UID", show_default=False,
        help="DICOMweb: store into this study (POST studies/UID).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, show_default=False,
        help="DICOMweb: at most N files per request [default: 100].")] = None,
    batch_mb: Annotated[float | None, typer.Option(
        "--batch-mb", min=0.001, show_default=False,
        help="DICOMweb: at most M MB per request [default: 100].")] = None,
    timeout: TimeoutOpt = None,
    calling_aet: CallingAetOpt = None,
    called_aet: CalledAetOpt = None,
) -> None:
    """Send DICOM files to a PACS (C-STORE, or STOW-RS with a dicomweb profile).

    Files that are not DICOM are skipped. Piped, stdout gets a JSON line per
    file: path, sop_instance_uid, status (stored, warning, failed, skipped),
    code (DIMSE status, or the STOW-RS FailureReason / WarningReason), message.
    """
    from medimg_cli.cli.progress import finish, progress_bar
    from medimg_cli.dimse.store import FileResult
    from medimg_cli.errors import UsageError

    rt = runtime(ctx)
    profile = rt.profile(profile_name)
    require_type(profile, "stow", ("dimse", "dicomweb"))
    if profile.type == "dimse":
        web_only = [name for name, given in (("--study", study), ("--batch-size", batch_size),
                                             ("--batch-mb", batch_mb)) if given is not None]
        if web_only:
            raise UsageError(f"{', '.join(web_only)}: only for dicomweb profiles "
                             f"('{profile.name}' is a dimse profile)")
        target = dimse_target(profile, calling_aet=calling_aet, called_aet=called_aet,
                              timeout=timeout)
    elif calling_aet or called_aet:
        raise UsageError(f"--calling-aet and --called-aet are only for dimse profiles "
                         f"('{profile.name}' is a dicomweb profile)")
    with progress_bar(rt, "stow") as bar:
        err = sys.stderr if bar else rt.stderr  # Rich wraps sys.stderr to print above the bar

        def show(result: FileResult) -> None:
            if not rt.stdout_is_terminal:
                print(json.dumps(result.as_json(), ensure_ascii=False), file=rt.stdout, flush=True)
            if result.status == "failed" or (result.status != "stored" and not rt.quiet):
                print(f"{result.status}: {result.path}: {result.message}", file=err, flush=True)

        if profile.type == "dimse":
            from medimg_cli.dimse.store import stow

            summary = stow(target, paths, parallel=parallel, progress=bar, on_result=show)
        else:
            from medimg_cli.dicomweb.stow import stow_rs

            summary = stow_rs(
                profile, paths, study=study, batch_size=batch_size or 100,
                batch_bytes=round((batch_mb or 100) * 1_000_000), parallel=parallel,
                timeout=timeout, progress=bar, on_result=show)
    finish(rt, summary, report)
