"""`medimg wadoget`: retrieve studies, series or instances by WADO-RS (DICOMweb profiles)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from medimg_cli.cli.options import ProfileArg, TimeoutOpt, require_type, runtime
from medimg_cli.cli.retrieve_cmd import (
    LayoutOpt,
    OutOpt,
    ReportOpt,
    SkipOpt,
    UidsFromOpt,
    read_items,
)
from medimg_cli.errors import UsageError

if TYPE_CHECKING:
    from medimg_cli.cli.runtime import Runtime
    from medimg_cli.config import Profile
    from medimg_cli.dimse.retrieve import RetrieveItem
    from medimg_cli.transfer import TransferSummary

WadoUidsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="STUDY/SERIES/SOP",
        help="The study, series and instance UIDs; or UID lines STUDY, STUDY/SERIES or "
        "STUDY/SERIES/SOP "
        "as `find --format uids` prints.",
        show_default=False,
    ),
]


def _items(uids: list[str] | None, uids_from: str | None) -> list[RetrieveItem]:
    """`STUDY [SERIES [SOP]]` as separate arguments, or UID lines (with `/`)."""
    args = list(uids or [])
    if 1 < len(args) <= 3 and not any("/" in a for a in args):
        args = ["/".join(a.strip() for a in args)]
    return read_items(args, uids_from)


def wadoget_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    uids: WadoUidsArg = None,
    *,
    uids_from: UidsFromOpt = None,
    out: OutOpt = None,
    layout: LayoutOpt = None,
    skip_existing: SkipOpt = False,
    transfer_syntax: Annotated[
        str,
        typer.Option("--transfer-syntax", metavar="UID|*",
                     help="Transfer syntax to ask for (the Accept parameter); * takes the "
                     "stored one."),
    ] = "*",
    metadata: Annotated[
        bool,
        typer.Option("--metadata",
                     help="Print the instances' metadata (DICOM JSON) instead of retrieving."),
    ] = False,
    metadata_out: Annotated[
        str | None,
        typer.Option("--metadata-out", metavar="FILE",
                     help="With --metadata: write the JSON to FILE instead of stdout.",
                     show_default=False),
    ] = None,
    frames: Annotated[
        str | None,
        typer.Option("--frames", metavar="LIST",
                     help="Pixel data of these frames of one instance (e.g. 1,3-5), one file "
                     "each, instead of the instance.", show_default=False),
    ] = None,
    rendered: Annotated[
        bool,
        typer.Option("--rendered",
                     help="The rendered image of one instance (see --accept) instead of the "
                     "instance."),
    ] = False,
    accept: Annotated[
        str,
        typer.Option("--accept", metavar="TYPE",
                     help="With --rendered: image/jpeg | image/png | image/gif."),
    ] = "image/jpeg",
    retries: Annotated[
        int,
        typer.Option("--retries", metavar="N", min=0, max=20,
                     help="When the stream breaks, list what is missing and resume instance "
                     "by instance, up to N times."),
    ] = 0,
    report: ReportOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Retrieve by WADO-RS: each instance streamed to disk under --out by --layout."""
    import json
    from pathlib import Path

    from medimg_cli.dicomweb.client import open_client
    from medimg_cli.dicomweb.wado import parse_frames
    from medimg_cli.storage import write_atomic

    rt = runtime(ctx)
    profile = rt.profile(profile_name)
    require_type(profile, "wadoget", ("dicomweb",))
    items = _items(uids, uids_from)
    if metadata_out and not metadata:
        raise UsageError("--metadata-out goes with --metadata")
    if sum((metadata, rendered, frames is not None)) > 1:
        raise UsageError("--metadata, --frames and --rendered exclude each other")
    if accept != "image/jpeg" and not rendered:
        raise UsageError("--accept goes with --rendered")
    if accept not in ("image/jpeg", "image/png", "image/gif"):
        raise UsageError(f"--accept '{accept}': expected image/jpeg, image/png or image/gif")
    frame_list = parse_frames(frames) if frames is not None else None
    if frame_list is not None or rendered:
        if skip_existing:
            raise UsageError("--skip-existing works on instances, not with --frames or "
                             "--rendered")
        if not all(item.sops for item in items):
            raise UsageError("--frames and --rendered work on instances: give STUDY SERIES SOP "
                             "(or STUDY/SERIES/SOP lines)")
    if metadata:
        from medimg_cli.dicomweb.wado import metadata as fetch_metadata

        with open_client(profile, timeout=timeout) as client:
            records = fetch_metadata(client, items)
        text = json.dumps(records, ensure_ascii=False, indent=None if metadata_out is None
                          and not rt.stdout_is_terminal else 2) + "\n"
        if metadata_out:
            write_atomic(Path(metadata_out), text.encode("utf-8"))
            rt.info(f"wadoget: metadata of {len(records)} instances written to {metadata_out}")
        else:
            rt.stdout.write(text)
            rt.stdout.flush()
        return
    retrieve_to_disk(
        rt, profile, items, out=out, layout=layout, skip_existing=skip_existing,
        transfer_syntax=transfer_syntax, frames=frame_list,
        rendered=accept if rendered else None, retries=retries, report=report, timeout=timeout,
    )


def retrieve_to_disk(
    rt: Runtime,
    profile: Profile,
    items: list[RetrieveItem],
    *,
    out: str | None,
    layout: str | None,
    skip_existing: bool,
    report: str | None,
    timeout: float | None,
    transfer_syntax: str = "*",
    frames: list[int] | None = None,
    rendered: str | None = None,
    retries: int = 0,
    operation: str = "wadoget",
) -> None:
    """WADO-RS retrieval to --out: `wadoget`, and `get` with a dicomweb profile."""
    import json
    from pathlib import Path

    from medimg_cli.cli.progress import progress_bar
    from medimg_cli.dicomweb.client import open_client
    from medimg_cli.dicomweb.wado import WadoOptions, Written, check_transfer_syntax, retrieve
    from medimg_cli.storage import DEFAULT_LAYOUT, Layout

    options = WadoOptions(
        out=Path(out or profile.output_dir).expanduser(),
        layout=Layout(layout or DEFAULT_LAYOUT),
        skip_existing=skip_existing,
        transfer_syntax=check_transfer_syntax(transfer_syntax),
        frames=frames,
        rendered=rendered,
        retries=retries,
    )
    piped = not rt.stdout_is_terminal

    def on_file(file: Written) -> None:
        if piped:
            rt.stdout.write(json.dumps({
                "path": str(file.path), "sop_instance_uid": file.sop_instance_uid,
                "study_instance_uid": file.study_instance_uid, "bytes": file.size}) + "\n")
            rt.stdout.flush()

    # Each part's .part file is removed by wado.fetch itself on any fault or Ctrl-C.
    with open_client(profile, timeout=timeout) as client, \
            progress_bar(rt, operation) as progress:
        summary = retrieve(client, items, options, progress=progress, on_file=on_file,
                           on_notice=lambda text: rt.info(f"medimg: {text}"),
                           profile=profile.name)
    summary.operation = operation
    _finish(rt, summary, report)


def _finish(rt: Runtime, summary: TransferSummary, report: str | None) -> None:
    """The summary line, --report, and the first failure's own message as the error."""
    from pathlib import Path

    from medimg_cli.errors import PartialError, RemoteError
    from medimg_cli.transfer import write_report

    if report:
        write_report(Path(report), summary)
    failures = [item.message for item in summary.items if item.failed]
    for message in failures[1:]:
        rt.info(f"medimg: {message}")
    rt.info(summary.line())
    if not failures:
        return
    saved = summary.done + summary.warnings
    more = f" (and {len(failures) - 1} more failures above)" if len(failures) > 1 else ""
    hint = ("the complete instances were kept; rerun with --skip-existing to fetch the rest"
            if saved else "nothing was saved; rerun with -vv for the HTTP exchange")
    if report:
        hint += f"; see {report}"
    error = PartialError if saved else RemoteError
    raise error(f"{summary.operation}: {failures[0]}{more}; {saved} instances saved", hint=hint)
