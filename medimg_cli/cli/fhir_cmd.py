"""`medimg fhir ...`: EHR lookup over FHIR R4 (patients, imaging studies, reports, any resource).

Results are the FHIR resources themselves in json/jsonl; tables and CSV show
HumanName, Identifier and CodeableConcept as text. `fhir studies --format uids`
prints DICOM Study Instance UIDs, one a line, for `wadoget --uids-from -`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medimg_cli.cli.options import (
    FormatOpt,
    ProfileArg,
    TimeoutOpt,
    check_format,
    require_type,
    runtime,
)
from medimg_cli.errors import UsageError

if TYPE_CHECKING:
    from medimg_cli.cli.runtime import Runtime
    from medimg_cli.config import Profile
    from medimg_cli.fhir.client import Page, ServerInfo
    from medimg_cli.fhir.model import Column

fhir_app = typer.Typer(
    help="EHR lookup over FHIR R4: patients, imaging studies, reports, any resource.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)

LIST_FORMATS = ("table", "json", "jsonl", "csv")
GENDERS = ("male", "female", "other", "unknown")
STUDY_STATUSES = ("registered", "available", "cancelled", "entered-in-error", "unknown")
REPORT_STATUSES = ("registered", "partial", "preliminary", "final", "amended", "corrected",
                   "appended", "cancelled", "entered-in-error", "unknown")
LOINC = "http://loinc.org"

LimitOpt = Annotated[
    int,
    typer.Option("--limit", min=0, help="Stop after N matches, following the Bundle's next "
                 "links until then (0: all)."),
]
PageSizeOpt = Annotated[
    int | None,
    typer.Option("--page-size", min=1, metavar="N",
                 help="Matches per page asked of the server (_count). Default: the smaller of "
                 "--limit and 100.", show_default=False),
]


def _fhir_profile(ctx: typer.Context, profile_name: str, command: str) -> tuple[Runtime, Profile]:
    rt = runtime(ctx)
    profile = rt.profile(profile_name)
    require_type(profile, command, ("fhir",))
    return rt, profile


def _warn_outcome(rt: Runtime) -> Callable[[dict[str, Any]], None]:
    from medimg_cli.fhir.client import outcome_text

    def warn(outcome: dict[str, Any]) -> None:
        rt.info(f"medimg: warning: the server says: {outcome_text(outcome)}")

    return warn


# --------------------------------------------------------------------------
# Rendering


def _cell(text: str) -> str:
    return " ".join(text.split())


def _write_table(rt: Runtime, columns: list[Column], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for header, _ in columns:
        table.add_column(header, overflow="fold" if header == "Study UID" else "ellipsis",
                         no_wrap=header != "Study UID")
    for row in rows:
        table.add_row(*row)
    console = Console(file=rt.stdout, force_terminal=rt.color, no_color=not rt.color,
                      highlight=False, soft_wrap=False,
                      width=None if rt.stdout_is_terminal else 4096)
    console.print(table)


def render_pages(rt: Runtime, pages: Iterator[Page], rtype: str, fmt: str) -> int:
    """Write the matches of a search as they arrive; return how many (resources, not lines)."""
    from medimg_cli.fhir.model import columns_for, index_included, study_uids
    from medimg_cli.output import render_records

    included: dict[str, dict[str, Any]] = {}

    def matches() -> Iterator[dict[str, Any]]:
        for page in pages:
            index_included(page.included, included)
            yield from page.matches

    if fmt in ("json", "jsonl"):
        return render_records(matches(), fmt, rt.stdout, level="study")
    if fmt == "uids":
        count = 0
        for study in matches():
            uids = study_uids(study)
            if not uids:
                rt.info(f"medimg: warning: ImagingStudy/{study.get('id')} has no DICOM Study "
                        "Instance UID (identifier system urn:dicom:uid); skipped")
            for uid in uids:
                rt.stdout.write(uid + "\n")
            rt.stdout.flush()
            count += 1
        return count
    columns = columns_for(rtype)
    if fmt == "csv":
        import csv

        writer = csv.writer(rt.stdout, lineterminator="\n")
        writer.writerow([header for header, _ in columns])
        count = 0
        for resource in matches():
            writer.writerow([_cell(get(resource, included)) for _, get in columns])
            count += 1
        return count
    rows = [[_cell(get(r, included)) for _, get in columns] for r in matches()]
    _write_table(rt, columns, rows)
    return len(rows)


def render_resource(rt: Runtime, resource: dict[str, Any], fmt: str) -> None:
    """One resource (a read): json indented, jsonl one line, table/csv by its type's columns."""
    from medimg_cli.fhir.client import Page

    if fmt == "json":
        from medimg_cli.output import write_json

        write_json(resource, rt.stdout)
        return
    render_pages(rt, iter([Page(matches=[resource])]), str(resource.get("resourceType")), fmt)


def _search(rt: Runtime, profile: Profile, rtype: str, params: list[tuple[str, str]], *,
            fmt: str, limit: int, page_size: int | None, timeout: float | None) -> None:
    from medimg_cli.dicomweb.client import open_client
    from medimg_cli.fhir.client import search_pages

    totals: list[int | None] = []  # the first page's Bundle.total (pages are not kept)

    def pages() -> Iterator[Page]:
        for page in search_pages(client, rtype, params, limit=limit or None,
                                 page_size=page_size, on_outcome=_warn_outcome(rt)):
            if not totals:
                totals.append(page.total)
            yield page

    with open_client(profile, timeout=timeout) as client:
        count = render_pages(rt, pages(), rtype, fmt)
    total = totals[0] if totals else None
    if limit and count >= limit and total is not None and total > limit:
        rt.info(f"{count} of {total} matches shown (--limit {limit})")
    elif fmt == "table" and rt.stdout_is_terminal:
        rt.info(f"{count} match" + ("" if count == 1 else "es"))


# --------------------------------------------------------------------------
# Commands


@fhir_app.command("patient")
def patient_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    patient_id: Annotated[
        str | None,
        typer.Argument(metavar="[ID]", help="Read this Patient; without it, search.",
                       show_default=False),
    ] = None,
    *,
    identifier: Annotated[
        str | None,
        typer.Option("--identifier", "-i", metavar="SYSTEM|VALUE",
                     help="Identifier (MRN...): SYSTEM|VALUE, or VALUE in any system.",
                     show_default=False),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Any part of a name (starts with).",
                                 show_default=False)
    ] = None,
    family: Annotated[
        str | None, typer.Option("--family", help="Family name (starts with).",
                                 show_default=False)
    ] = None,
    given: Annotated[
        str | None, typer.Option("--given", help="Given name (starts with).", show_default=False)
    ] = None,
    birthdate: Annotated[
        str | None,
        typer.Option("--birthdate", metavar="DATE",
                     help="Birth date: 1970-01-01 (or 19700101); FHIR prefixes work: ge1970.",
                     show_default=False),
    ] = None,
    gender: Annotated[
        str | None, typer.Option("--gender", help="male | female | other | unknown.",
                                 show_default=False)
    ] = None,
    limit: LimitOpt = 100,
    page_size: PageSizeOpt = None,
    fmt: FormatOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Read a Patient by id, or search Patients by identifier, name, birth date, gender."""
    rt, profile = _fhir_profile(ctx, profile_name, "fhir patient")
    fmt = check_format(fmt, rt, LIST_FORMATS)
    filters = {"identifier": identifier, "name": name, "family": family, "given": given,
               "birthdate": _fhir_date(birthdate) if birthdate else None, "gender": gender}
    params = [(key, value) for key, value in filters.items() if value is not None]
    if gender is not None and gender not in GENDERS:
        raise UsageError(f"--gender '{gender}' is not one of {', '.join(GENDERS)}")
    if patient_id is not None:
        if params:
            raise UsageError("give a Patient ID or search options, not both",
                             hint="`fhir patient PROFILE ID` reads; the options search")
        _read(rt, profile, "Patient", patient_id, fmt, timeout)
        return
    _search(rt, profile, "Patient", params, fmt=fmt, limit=limit, page_size=page_size,
            timeout=timeout)


def _fhir_date(text: str) -> str:
    """`19700101` as `1970-01-01`; anything else (FHIR's own syntax) as given."""
    value = text.strip()
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _read(rt: Runtime, profile: Profile, rtype: str, rid: str, fmt: str,
          timeout: float | None) -> None:
    from medimg_cli.dicomweb.client import open_client
    from medimg_cli.fhir.client import read

    with open_client(profile, timeout=timeout) as client:
        resource = read(client, rtype, rid)
    render_resource(rt, resource, fmt)


@fhir_app.command("studies")
def studies_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    *,
    patient: Annotated[
        str, typer.Option("--patient", "-p", metavar="ID", help="The Patient's FHIR id.",
                          show_default=False)
    ],
    status: Annotated[
        str | None,
        typer.Option("--status", help="registered | available | cancelled | "
                     "entered-in-error | unknown.", show_default=False),
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option("--sort", metavar="KEYS",
                     help="Sort order (_sort), e.g. -started for the newest first.",
                     show_default=False),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="DATE",
                     help="Started on or after: 2024-01-31, 20240131, today, yesterday, 7d.",
                     show_default=False),
    ] = None,
    limit: LimitOpt = 100,
    page_size: PageSizeOpt = None,
    fmt: FormatOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Search a patient's ImagingStudies (the worklist query).

    `--format uids` prints their DICOM Study Instance UIDs, one a line:
    `medimg fhir studies EHR -p ID -f uids | medimg wadoget PACS --uids-from -`.
    """
    from medimg_cli.fhir.client import check_id

    rt, profile = _fhir_profile(ctx, profile_name, "fhir studies")
    fmt = check_format(fmt, rt, (*LIST_FORMATS, "uids"))
    params = [("patient", check_id(patient.removeprefix("Patient/")))]
    if status and not set(status.split(",")) <= set(STUDY_STATUSES):
        raise UsageError(f"--status '{status}' is not one of {', '.join(STUDY_STATUSES)}",
                         hint="several: comma-separated, e.g. available,registered")
    if status:
        params.append(("status", status))
    if since:
        params.append(("started", "ge" + _since(since)))
    if sort:
        params.append(("_sort", sort))
    if fmt in ("table", "csv"):  # the patient's name for the Patient column
        params.append(("_include", "ImagingStudy:patient"))
    _search(rt, profile, "ImagingStudy", params, fmt=fmt, limit=limit, page_size=page_size,
            timeout=timeout)


def _since(text: str) -> str:
    from medimg_cli.query import parse_date

    start = parse_date(text, what="--since").split("-")[0]
    if not start:
        raise UsageError(f"--since '{text}' has no start date")
    return f"{start[:4]}-{start[4:6]}-{start[6:8]}"


@fhir_app.command("report")
def report_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    *,
    patient: Annotated[
        str | None, typer.Option("--patient", "-p", metavar="ID",
                                 help="The Patient's FHIR id.", show_default=False)
    ] = None,
    code: Annotated[
        str | None,
        typer.Option("--code", metavar="LOINC",
                     help="What the report is: a LOINC code (e.g. 18748-4), or SYSTEM|CODE.",
                     show_default=False),
    ] = None,
    conclusion: Annotated[
        str | None, typer.Option("--conclusion", metavar="TEXT", help="The report's conclusion.",
                                 show_default=False)
    ] = None,
    study: Annotated[
        list[str] | None,
        typer.Option("--study", metavar="ID", help="ImagingStudy id the report is about "
                     "(repeatable).", show_default=False),
    ] = None,
    status: Annotated[
        str, typer.Option("--status", help="final, preliminary, amended, ...")
    ] = "final",
    from_file: Annotated[
        str | None,
        typer.Option("--from-file", metavar="FILE",
                     help="Create this resource (FHIR JSON; - for stdin) instead.",
                     show_default=False),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", "-f", metavar="FORMAT",
                     help="id (the new id only) | json | jsonl (the created resource)."),
    ] = "id",
    timeout: TimeoutOpt = None,
) -> None:
    """Create a DiagnosticReport; print the new id.

    Either --patient, --code and --conclusion (with --study and --status), or
    --from-file with a whole resource.
    """
    from medimg_cli.dicomweb.client import open_client
    from medimg_cli.fhir.client import create

    rt, profile = _fhir_profile(ctx, profile_name, "fhir report")
    if fmt not in ("id", "json", "jsonl"):
        raise UsageError(f"--format '{fmt}' is not one of id, json, jsonl")
    given = [opt for opt, value in (("--patient", patient), ("--code", code),
                                    ("--conclusion", conclusion), ("--study", study))
             if value]
    if from_file is not None:
        if given:
            raise UsageError(f"--from-file and {', '.join(given)} do not go together",
                             hint="the file holds the whole resource")
        resource = _resource_from_file(from_file)
    else:
        missing = [opt for opt, value in (("--patient", patient), ("--code", code),
                                          ("--conclusion", conclusion)) if not value]
        if missing:
            raise UsageError(f"missing {', '.join(missing)}",
                             hint="give --patient, --code and --conclusion, or --from-file")
        if status not in REPORT_STATUSES:
            raise UsageError(f"--status '{status}' is not one of {', '.join(REPORT_STATUSES)}")
        resource = diagnostic_report(str(patient), str(code), str(conclusion), study or [],
                                     status)
    with open_client(profile, timeout=timeout) as client:
        new_id, stored = create(client, resource)
    if fmt == "id":
        rt.stdout.write(new_id + "\n")
    else:
        render_resource(rt, stored or {**resource, "id": new_id}, fmt)
    rt.info(f"created {resource['resourceType']}/{new_id}")


def diagnostic_report(patient: str, code: str, conclusion: str, studies: list[str],
                      status: str) -> dict[str, Any]:
    """A radiology DiagnosticReport for a patient (and its ImagingStudies)."""
    import datetime as dt

    from medimg_cli.fhir.client import check_id

    system, sep, value = code.rpartition("|")
    if not value.strip() or (sep and not system.strip()):
        empty = "code" if not value.strip() else "system before '|'"
        raise UsageError(f"--code '{code}': the {empty} is empty",
                         hint="give a LOINC code (e.g. 18748-4), or SYSTEM|CODE")
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": system if sep else LOINC, "code": value}]},
        "subject": {"reference": f"Patient/{check_id(patient)}"},
        "issued": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "conclusion": conclusion,
    }
    if studies:
        report["imagingStudy"] = [{"reference": f"ImagingStudy/{check_id(s)}"} for s in studies]
    return report


def _resource_from_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--from-file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--from-file {path}: not UTF-8 text",
                         hint="give a FHIR JSON resource, saved as UTF-8") from None
    try:
        resource = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--from-file {path}: not JSON: {exc}") from None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise UsageError(f"--from-file {path}: not a FHIR resource (no resourceType)")
    return resource


@fhir_app.command("get")
def get_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    ref: Annotated[str, typer.Argument(metavar="TYPE/ID", help="e.g. DiagnosticReport/123.",
                                       show_default=False)],
    *,
    fmt: FormatOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Read any resource by TYPE/ID."""
    from medimg_cli.fhir.client import parse_reference

    rt, profile = _fhir_profile(ctx, profile_name, "fhir get")
    fmt = check_format(fmt, rt, LIST_FORMATS)
    rtype, rid = parse_reference(ref)
    _read(rt, profile, rtype, rid, fmt, timeout)


@fhir_app.command("search")
def search_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    rtype: Annotated[str, typer.Argument(metavar="TYPE", help="Resource type, e.g. Observation.",
                                         show_default=False)],
    params: Annotated[
        list[str] | None,
        typer.Argument(metavar="[KEY=VALUE]...",
                       help="Search parameters as FHIR spells them: code=http://loinc.org|"
                       "18748-4, date=ge2024-01-01, _sort=-date.", show_default=False),
    ] = None,
    *,
    limit: LimitOpt = 100,
    page_size: PageSizeOpt = None,
    fmt: FormatOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Search any resource type with FHIR search parameters."""
    from medimg_cli.fhir.client import check_type

    rt, profile = _fhir_profile(ctx, profile_name, "fhir search")
    fmt = check_format(fmt, rt, LIST_FORMATS)
    pairs = []
    for item in params or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"'{item}' is not KEY=VALUE", hint="e.g. status=final")
        pairs.append((key, value))
    _search(rt, profile, check_type(rtype), pairs, fmt=fmt, limit=limit, page_size=page_size,
            timeout=timeout)


# --------------------------------------------------------------------------
# echo with a fhir profile


def fhir_echo(rt: Runtime, profile: Profile, count: int, interval: float,
              timeout: float | None, fmt: str) -> None:
    """`GET [base]/metadata`, timed, `count` times; FHIR version, software, SMART endpoints."""
    import time

    from medimg_cli.dicomweb.client import open_client
    from medimg_cli.fhir.client import server_info

    url = str(profile.get("url"))
    echoes = []
    first: ServerInfo | None = None
    with open_client(profile, timeout=timeout) as client:
        for seq in range(1, count + 1):
            if seq > 1 and interval > 0:
                time.sleep(interval)
            info = server_info(client, discover=first is None)
            first = first or info
            ms = round(info.seconds * 1000, 3)
            echoes.append({"url": url, "seq": seq, "status": info.status, "ms": ms})
            if fmt == "table":
                rt.stdout.write(f"GET {url}/metadata: seq={seq} HTTP {info.status} "
                                f"time={ms:.2f} ms\n")
            elif fmt == "jsonl":
                rt.stdout.write(json.dumps(echoes[-1]) + "\n")
            rt.stdout.flush()
    summary = _server_summary(first) if first is not None else {}
    if fmt == "json":
        rt.stdout.write(json.dumps({"profile": profile.name, "url": url, **summary,
                                    "echoes": echoes}, indent=2, ensure_ascii=False) + "\n")
        return
    software = summary.get("software") or {}
    rt.info(f"FHIR {summary.get('fhirVersion') or '?'} server: "
            f"{software.get('name') or '?'} {software.get('version') or ''}".rstrip())
    smart = summary.get("smart")
    if smart:
        rt.info(f"SMART: token endpoint {smart.get('token_endpoint')}; "
                f"authorize endpoint {smart.get('authorization_endpoint')}")
        if smart.get("capabilities"):
            rt.detail("SMART capabilities: " + ", ".join(smart["capabilities"]))
    else:
        rt.info("SMART: no .well-known/smart-configuration")


def _server_summary(info: ServerInfo) -> dict[str, Any]:
    cap = info.capability
    smart = None
    if info.smart is not None:
        keys = ("issuer", "token_endpoint", "authorization_endpoint",
                "device_authorization_endpoint", "revocation_endpoint", "jwks_uri",
                "grant_types_supported", "token_endpoint_auth_methods_supported",
                "scopes_supported", "capabilities")
        smart = {k: info.smart[k] for k in keys if k in info.smart}
    return {
        "fhirVersion": cap.get("fhirVersion"),
        "software": cap.get("software"),
        "implementation": cap.get("implementation"),
        "smart": smart,
    }
