"""`medimg find PROFILE`: query a PACS with the same filters whatever the protocol."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from medimg_cli.cli.dimse_common import dimse_target, show_association_report
from medimg_cli.cli.options import (
    CalledAetOpt,
    CallingAetOpt,
    FormatOpt,
    ProfileArg,
    TimeoutOpt,
    check_format,
    require_type,
    runtime,
)
from medimg_cli.errors import UsageError
from medimg_cli.output import FORMATS

if TYPE_CHECKING:
    from medimg_cli.cli.runtime import Runtime


def find_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    *,
    level: Annotated[
        str, typer.Option("--level", "-l", help="patient | study | series | instance.")
    ] = "study",
    root: Annotated[
        str, typer.Option("--root", help="Information model: study (Study Root) or patient.")
    ] = "study",
    patient_id: Annotated[
        str | None, typer.Option("--patient-id", "-p", help="Patient ID (wildcards * ?).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="Patient name, e.g. 'DOE^J*' (wildcards * ?)."),
    ] = None,
    birthdate: Annotated[
        str | None, typer.Option("--birthdate", help="Birth date or range, as --date.")
    ] = None,
    date: Annotated[
        str | None,
        typer.Option(
            "--date",
            "-d",
            help="Study date: 20240131, 20240101-20240131, 20240101-, today, yesterday, "
            "7d (last 7 days).",
        ),
    ] = None,
    modality: Annotated[
        str | None, typer.Option("--modality", "-m", help="Modality, or a list: CT,MR.")
    ] = None,
    accession: Annotated[
        str | None, typer.Option("--accession", "-a", help="Accession number.")
    ] = None,
    description: Annotated[
        str | None,
        typer.Option("--description", help="Study (or, below study level, series) description."),
    ] = None,
    study_uid: Annotated[
        str | None, typer.Option("--study-uid", help="Study Instance UID(s), comma-separated.")
    ] = None,
    series_uid: Annotated[
        str | None, typer.Option("--series-uid", help="Series Instance UID(s), comma-separated.")
    ] = None,
    keys: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            "-k",
            metavar="KEY=VALUE",
            help="Match or ask for any attribute: keyword or gggg,eeee; an empty value "
            "asks for the key back. Repeatable.",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", help="Stop after N matches (sends C-CANCEL).", show_default=False),
    ] = None,
    fuzzy: Annotated[
        bool,
        typer.Option("--fuzzy", help="DICOMweb: ask for fuzzy matching of person names "
                     "(fuzzymatching=true; the server decides what it means)."),
    ] = False,
    fmt: FormatOpt = None,
    timeout: TimeoutOpt = None,
    calling_aet: CallingAetOpt = None,
    called_aet: CalledAetOpt = None,
) -> None:
    """Query for patients, studies, series or instances (C-FIND).

    Results are the DICOM JSON model in json/jsonl; `--format uids` prints
    STUDY, STUDY/SERIES or STUDY/SERIES/SOP lines that `move`, `get` and `wadoget` accept.
    """
    from medimg_cli.dimse.association import AssociationReport
    from medimg_cli.dimse.find import find
    from medimg_cli.output import render_records
    from medimg_cli.query import build_query

    rt = runtime(ctx)
    profile = rt.profile(profile_name)
    require_type(profile, "find", ("dimse", "dicomweb"))
    fmt = check_format(fmt, rt, FORMATS)
    query = build_query(
        level=level.lower(),
        root=root.lower(),
        patient_id=patient_id,
        name=name,
        birthdate=birthdate,
        date=date,
        modality=modality,
        accession=accession,
        description=description,
        study_uid=study_uid,
        series_uid=series_uid,
        keys=keys or (),
        limit=limit,
    )
    started = time.perf_counter()
    if fuzzy and profile.type != "dicomweb":
        raise UsageError("--fuzzy is a QIDO-RS option; C-FIND has no fuzzy matching",
                         hint="use wildcards (* ?) with --name instead")
    query.fuzzy = fuzzy
    if profile.type == "dicomweb":
        from medimg_cli.dicomweb.client import open_client
        from medimg_cli.dicomweb.qido import qido_find

        with open_client(profile, timeout=timeout) as client:
            count = render_records(qido_find(client, query), fmt, rt.stdout, level=query.level,
                                   extra_keys=query.extra_keys, color=rt.color)
        _summary(rt, count, started)
        return
    target = dimse_target(profile, calling_aet=calling_aet, called_aet=called_aet,
                          timeout=timeout)
    reports: list[AssociationReport] = []
    records = find(target, query, report=reports)
    if rt.verbose:
        first = next(records, None)
        show_association_report(rt, reports[0], target.calling_aet,
                                f"{target.called_aet}@{target.host}:{target.port}")
        if first is not None:
            import itertools

            records = itertools.chain([first], records)
    count = render_records(records, fmt, rt.stdout, level=query.level,
                           extra_keys=query.extra_keys, color=rt.color)
    _summary(rt, count, started)


def _summary(rt: Runtime, count: int, started: float) -> None:
    rt.stdout.flush()
    if rt.stderr_is_terminal or rt.verbose:
        noun = "match" if count == 1 else "matches"
        rt.info(f"{count} {noun} in {time.perf_counter() - started:.2f} s")
