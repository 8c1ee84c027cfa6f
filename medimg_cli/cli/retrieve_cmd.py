"""`medimg move` and `medimg get`: retrieve studies, series or instances to disk."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medimg_cli.cli.dimse_common import dimse_target, tls_settings
from medimg_cli.cli.options import (
    CalledAetOpt,
    CallingAetOpt,
    ProfileArg,
    require_type,
    runtime,
)
from medimg_cli.errors import UsageError

if TYPE_CHECKING:
    from medimg_cli.cli.runtime import Runtime
    from medimg_cli.dimse.retrieve import RetrieveItem

UidsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[UID]...",
        help="STUDY, STUDY/SERIES or STUDY/SERIES/SOP, as `find --format uids` prints.",
        show_default=False,
    ),
]
UidsFromOpt = Annotated[
    str | None,
    typer.Option("--uids-from", metavar="FILE",
                 help="Read UID lines from FILE ('-' for stdin).", show_default=False),
]
OutOpt = Annotated[
    str | None,
    typer.Option("--out", "-o", metavar="DIR",
                 help="Where files go (default: the profile's output_dir).", show_default=False),
]
LayoutOpt = Annotated[
    str | None,
    typer.Option(
        "--layout", metavar="TEMPLATE",
        help="Path of each file below --out. Default: "
        "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
        show_default=False,
    ),
]
SkipOpt = Annotated[
    bool,
    typer.Option("--skip-existing",
                 help="Resume: fetch only instances not already complete under --out."),
]
ReportOpt = Annotated[
    str | None,
    typer.Option("--report", metavar="FILE", help="Write the summary as JSON to FILE.",
                 show_default=False),
]
ParallelOpt = Annotated[
    int,
    typer.Option("--parallel", "-P", metavar="N", min=1, max=32,
                 help="Retrieve over N associations in N processes (the instances are "
                 "listed first and split in batches)."),
]
RetrieveTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout", metavar="SECONDS",
        help="Limit for connecting, for the association to be accepted, and for idle time "
        "during the transfer: the longest wait with neither a response nor an image "
        "arriving. A long transfer that keeps moving never times out. Default: the "
        "profile's timeout.",
        show_default=False,
    ),
]


def read_items(uids: list[str] | None, uids_from: str | None) -> list[RetrieveItem]:
    """UID lines from the arguments and --uids-from, blank lines and #comments skipped."""
    from medimg_cli.dimse.retrieve import RetrieveItem

    lines = list(uids or [])
    if uids_from:
        if uids_from == "-":
            lines += sys.stdin.read().splitlines()
        else:
            try:
                lines += Path(uids_from).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise UsageError(f"--uids-from {uids_from}: {exc.strerror}") from None
    items = [RetrieveItem.parse(line) for line in lines
             if line.strip() and not line.lstrip().startswith("#")]
    if not items:
        raise UsageError("no UIDs to retrieve",
                         hint="give UID lines as arguments or with --uids-from FILE (- for stdin)")
    return list(dict.fromkeys(items))


def _run(
    kind: str,
    rt: Runtime,
    profile_name: str,
    uids: list[str] | None,
    uids_from: str | None,
    *,
    out: str | None,
    layout: str | None,
    skip_existing: bool,
    report: str | None,
    timeout: float | None,
    calling_aet: str | None,
    called_aet: str | None,
    dest: str | None = None,
    port: int | None = None,
    parallel: int = 1,
) -> None:
    import json

    from medimg_cli.cli.progress import finish, progress_bar
    from medimg_cli.config import ae_title
    from medimg_cli.dimse.receive import Received
    from medimg_cli.dimse.retrieve import RetrieveOptions, retrieve, retrieve_parallel
    from medimg_cli.storage import DEFAULT_LAYOUT, Layout

    profile = rt.profile(profile_name)
    require_type(profile, kind, ("dimse", "dicomweb") if kind == "get" else ("dimse",))
    items = read_items(uids, uids_from)
    if profile.type == "dicomweb":
        # The same retrieval over WADO-RS, so that a nightly job needs only the
        # profile name changed.
        from medimg_cli.cli.wado_cmd import retrieve_to_disk

        if parallel > 1 or calling_aet or called_aet:
            raise UsageError("--parallel, --aet and --aec are DIMSE options",
                             hint=f"'{profile.name}' is a dicomweb profile")
        retrieve_to_disk(rt, profile, items, out=out, layout=layout,
                         skip_existing=skip_existing, report=report, timeout=timeout,
                         operation=kind)
        return
    target = dimse_target(profile, calling_aet=calling_aet, called_aet=called_aet,
                          timeout=timeout)
    if dest is not None:
        try:
            dest = ae_title(dest)
        except ValueError as exc:
            raise UsageError(f"--dest '{dest}': expected {exc}") from None
        if skip_existing:
            raise UsageError("--skip-existing needs the files here; it does not go with --dest")
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--port {port}: expected a port number from 1 to 65535")
    options = RetrieveOptions(
        out=Path(out or profile.output_dir).expanduser(),
        layout=Layout(layout or DEFAULT_LAYOUT),
        skip_existing=skip_existing,
        dest=dest,
        receive_aet=target.calling_aet,
        receive_port=port if port is not None else profile.receive_port,
        receive_tls=tls_settings(profile) if profile.get("receive_tls", False) else None,
    )
    piped = not rt.stdout_is_terminal

    def on_file(file: Received) -> None:
        if piped:
            rt.stdout.write(json.dumps({
                "path": str(file.path), "sop_instance_uid": file.sop_instance_uid,
                "study_instance_uid": file.study_instance_uid, "bytes": file.size}) + "\n")

    if parallel > 1 and dest is not None:
        raise UsageError("--parallel goes with medimg's own receiver, not with --dest")
    with progress_bar(rt, kind) as progress:
        if parallel > 1:
            summary = retrieve_parallel(kind, target, items, options, parallel,
                                        progress=progress, on_file=on_file,
                                        profile=profile.name)
        else:
            summary = retrieve(kind, target, items, options, progress=progress,
                               on_file=on_file, profile=profile.name)
    rt.stdout.flush()
    for item in summary.items:
        if item.message:
            rt.info(f"medimg: {item.message}")
    finish(rt, summary, report)


def move_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    uids: UidsArg = None,
    *,
    uids_from: UidsFromOpt = None,
    dest: Annotated[
        str | None,
        typer.Option("--dest", metavar="AET",
                     help="Move to this AE instead of medimg's own receiver (third-party move).",
                     show_default=False),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", metavar="PORT",
                     help="Port of medimg's receiver (default: receive_port).",
                     show_default=False),
    ] = None,
    out: OutOpt = None,
    layout: LayoutOpt = None,
    skip_existing: SkipOpt = False,
    parallel: ParallelOpt = 1,
    report: ReportOpt = None,
    timeout: RetrieveTimeoutOpt = None,
    calling_aet: CallingAetOpt = None,
    called_aet: CalledAetOpt = None,
) -> None:
    """Retrieve by C-MOVE: to medimg's own receiver (AE --aet, port --port), or --dest.

    The PACS must know our AE title with this host's address and the receive
    port as a move destination; `medimg get` needs no inbound port.
    """
    _run("move", runtime(ctx), profile_name, uids, uids_from, out=out, layout=layout,
         skip_existing=skip_existing, report=report, timeout=timeout,
         calling_aet=calling_aet, called_aet=called_aet, dest=dest, port=port,
         parallel=parallel)


def get_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    uids: UidsArg = None,
    *,
    uids_from: UidsFromOpt = None,
    out: OutOpt = None,
    layout: LayoutOpt = None,
    skip_existing: SkipOpt = False,
    parallel: ParallelOpt = 1,
    report: ReportOpt = None,
    timeout: RetrieveTimeoutOpt = None,
    calling_aet: CallingAetOpt = None,
    called_aet: CalledAetOpt = None,
) -> None:
    """Retrieve by C-GET over one association: no inbound port needed."""
    _run("get", runtime(ctx), profile_name, uids, uids_from, out=out, layout=layout,
         skip_existing=skip_existing, report=report, timeout=timeout,
         calling_aet=calling_aet, called_aet=called_aet, parallel=parallel)
