"""`medimg sandbox`: a local PACS (DIMSE), DICOMweb and FHIR server to try medimg on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from medimg_cli.cli.options import runtime
from medimg_cli.cli.runtime import Runtime
from medimg_cli.errors import UsageError

SANDBOX_PROFILES = ("sandbox", "sandbox-web", "sandbox-fhir")


def profiles_text(host: str, dicom_port: int, http_port: int, aet: str) -> str:
    """The three profiles `--write-profiles` adds, as TOML."""
    base = f"http://{host}:{http_port}"
    return (
        "[profiles.sandbox]\n"
        'type = "dimse"\n'
        'description = "medimg sandbox (DIMSE)"\n'
        f'host = "{host}"\nport = {dicom_port}\ncalled_aet = "{aet}"\n\n'
        "[profiles.sandbox-web]\n"
        'type = "dicomweb"\n'
        'description = "medimg sandbox (DICOMweb)"\n'
        f'url = "{base}/dicom-web"\nauth = "none"\n\n'
        "[profiles.sandbox-fhir]\n"
        'type = "fhir"\n'
        'description = "medimg sandbox (FHIR R4)"\n'
        f'url = "{base}/fhir"\nauth = "none"\n'
    )


_TABLE = re.compile(r'^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$')


def merge_profiles(existing: str, addition: str) -> str:
    """`existing` config text without its sandbox profile tables, plus `addition`.

    Every other line (other profiles, comments, defaults) stays as it was.
    """
    names = {f"profiles.{n}" for n in SANDBOX_PROFILES}
    names |= {f'profiles."{n}"' for n in SANDBOX_PROFILES}
    kept: list[str] = []
    skipping = False
    for line in existing.splitlines():
        match = _TABLE.match(line)
        if match and not line.lstrip().startswith("[["):
            skipping = re.sub(r"\s*\.\s*", ".", match.group(1)) in names
        if not skipping:
            kept.append(line)
    text = "\n".join(kept).rstrip()
    return (text + "\n\n" if text else "") + addition


def write_profiles(config_path: Path, host: str, dicom_port: int, http_port: int,
                   aet: str) -> Path | None:
    """Add (or replace) the sandbox profiles; when that changes a sandbox profile the
    file already had, the previous file is kept as CONFIG.bak (returned)."""
    from medimg_cli.config import parse_config
    from medimg_cli.errors import ConfigError
    from medimg_cli.storage import write_atomic

    try:
        existing = config_path.read_text(encoding="utf-8") if config_path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {config_path}: {exc}") from None
    text = merge_profiles(existing, profiles_text(host, dicom_port, http_port, aet))
    new = parse_config(text, config_path).profiles  # never write a config that does not load
    backup = None
    changed = False
    if existing.strip() and text != existing:
        try:
            old = parse_config(existing, config_path).profiles
            changed = any(name in old and old[name].values != new[name].values
                          for name in SANDBOX_PROFILES)
        except ConfigError:
            changed = True
    try:
        if changed:
            backup = config_path.with_name(config_path.name + ".bak")
            write_atomic(backup, existing.encode("utf-8"))
        config_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(config_path, text.encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"--write-profiles: cannot write {backup or config_path}: "
                         f"{exc.strerror or exc}",
                         hint="check the config folder's permissions, or leave out "
                         "--write-profiles") from None
    return backup


def own_receiver(rt: Runtime) -> str:
    """medimg's own receiver as a move destination: ``[defaults]`` calling_aet and
    receive_port of the config (MEDIMG=127.0.0.1:11113 when there is none)."""
    from medimg_cli.errors import MedimgError

    try:
        defaults = rt.config().defaults
        return f"{defaults.calling_aet}=127.0.0.1:{defaults.receive_port or 11113}"
    except MedimgError:  # no usable config: the built-in defaults
        return "MEDIMG=127.0.0.1:11113"


def sandbox_command(
    ctx: typer.Context,
    *,
    data: Annotated[
        Path | None,
        typer.Option("--data", metavar="DIR", help="Data folder (files + sqlite index). "
                     "A new folder gets demo studies; DICOM files already in it are indexed. "
                     "Default: the user data folder's medimg/sandbox.", show_default=False),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    dicom_port: Annotated[
        int, typer.Option("--dicom-port", min=1, max=65535, help="DIMSE port.")] = 11112,
    http_port: Annotated[
        int, typer.Option("--http-port", min=1, max=65535,
                          help="HTTP port: DICOMweb under /dicom-web, FHIR under /fhir.")
    ] = 8080,
    aet: Annotated[str, typer.Option("--aet", help="The sandbox's AE title.")] = "SANDBOX",
    move_dest: Annotated[
        list[str] | None,
        typer.Option("--move-dest", metavar="AET=HOST:PORT",
                     help="A C-MOVE destination (repeatable). Default: medimg's own "
                     "receiver, calling_aet and receive_port of [defaults] at 127.0.0.1 "
                     "(MEDIMG=127.0.0.1:11113).", show_default=False),
    ] = None,
    empty: Annotated[
        bool,
        typer.Option("--empty", help="A new data folder stays empty (no demo studies): "
                     "a receiver for what modalities or other PACS send."),
    ] = False,
    write_profiles_flag: Annotated[
        bool,
        typer.Option("--write-profiles", help="Add the profiles sandbox (dimse), sandbox-web "
                     "(dicomweb) and sandbox-fhir (fhir) to the config file, other profiles "
                     "untouched (when this changes sandbox profiles already there, the "
                     "previous file is kept as CONFIG.bak); then serve."),
    ] = False,
    no_redact: Annotated[
        bool,
        typer.Option("--no-redact", help="Keep patient data (names, IDs in request paths "
                     "and queries) in the printed lines; by default it is shown as "
                     "<PHI:hash>, as in -vv logs and traces. Secrets stay hidden."),
    ] = False,
) -> None:
    """Serve a local PACS (C-ECHO, C-FIND, C-MOVE, C-GET, C-STORE), DICOMweb and FHIR R4
    in the foreground until Ctrl-C, printing every association and request."""
    from medimg_cli.config import ae_title, resolve_config_path
    from medimg_cli.sandbox.dimse import Destination, parse_destination
    from medimg_cli.sandbox.server import SandboxSettings, default_data_dir, serve

    rt = runtime(ctx)
    try:
        aet = ae_title(aet)
    except ValueError as exc:
        raise UsageError(f"--aet '{aet}': {exc}") from None
    dests: dict[str, Destination] = {}
    for item in move_dest or [own_receiver(rt)]:
        try:
            dest = parse_destination(item)
        except ValueError as exc:
            raise UsageError(f"--move-dest: {exc}") from None
        dests[dest.aet] = dest
    if dicom_port == http_port:
        raise UsageError("--dicom-port and --http-port must differ")
    if write_profiles_flag:
        path = resolve_config_path(rt.config_path)
        backup = write_profiles(path, host, dicom_port, http_port, aet)
        rt.info(f"profiles {', '.join(SANDBOX_PROFILES)} written to {path}"
                + (f" (they replace different ones: the previous file is {backup})"
                   if backup else ""))
    settings = SandboxSettings(data=(data or default_data_dir()).expanduser(), host=host,
                               dicom_port=dicom_port, http_port=http_port, aet=aet,
                               destinations=dests, demo=not empty,
                               redact=not (no_redact or ctx.find_root().params.get("no_redact")))
    serve(settings)
