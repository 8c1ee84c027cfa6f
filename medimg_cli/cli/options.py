"""Shared parameter definitions, so every command spells an option the same way."""

from __future__ import annotations

from typing import Annotated

import typer

from medimg_cli.cli.runtime import Runtime
from medimg_cli.config import Profile
from medimg_cli.errors import UsageError


def complete_profile(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for a profile argument: the profile names in the config."""
    from medimg_cli.config import load_config

    root = ctx.find_root()
    path = root.params.get("config") if root.params else None
    try:
        names = sorted(load_config(path).profiles)
    except Exception:  # completion must never print a traceback into the shell
        return []
    return [name for name in names if name.startswith(incomplete)]


ProfileArg = Annotated[
    str,
    typer.Argument(
        metavar="PROFILE",
        help="Profile name from the config file (`medimg profiles` lists them).",
        autocompletion=complete_profile,
        show_default=False,
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        metavar="FORMAT",
        help="table | json | jsonl | csv | uids. Default: table on a terminal, jsonl when piped.",
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Limit for connecting, for the association to be accepted, and for each "
        "response to arrive. Default: the profile's timeout.",
        show_default=False,
    ),
]
CallingAetOpt = Annotated[
    str | None,
    typer.Option(
        "--aet",
        "--calling-aet",
        metavar="AET",
        help="Our AE title (calling AE), overriding the profile.",
        show_default=False,
    ),
]
CalledAetOpt = Annotated[
    str | None,
    typer.Option(
        "--aec",
        "--called-aet",
        metavar="AET",
        help="The peer's AE title (called AE), overriding the profile.",
        show_default=False,
    ),
]


def runtime(ctx: typer.Context) -> Runtime:
    """The Runtime the main callback put on the context."""
    obj = ctx.find_root().obj
    if not isinstance(obj, Runtime):  # pragma: no cover - main always sets it
        obj = Runtime()
        ctx.find_root().obj = obj
    return obj


def require_type(profile: Profile, command: str, allowed: tuple[str, ...]) -> None:
    """A command that does not fit the profile's type says so and names what does."""
    if profile.type in allowed:
        return
    fits = {
        "dimse": "echo, find, move, get, stow",
        "dicomweb": "echo, find, get, wadoget, stow",
        "fhir": "echo, fhir patient, fhir studies, fhir report, login",
    }[profile.type]
    raise UsageError(
        f"`{command}` does not work with profile '{profile.name}', a {profile.type} profile "
        f"(it takes {' or '.join(allowed)} profiles)",
        hint=f"with a {profile.type} profile use: {fits}",
    )


def check_format(fmt: str | None, rt: Runtime, allowed: tuple[str, ...]) -> str:
    """The output format: the one given, else the runtime's default; checked."""
    chosen = fmt or rt.default_format()
    if chosen == "table" and "table" not in allowed:
        chosen = "jsonl" if "jsonl" in allowed else allowed[0]
    if chosen not in allowed:
        raise UsageError(f"--format '{chosen}' is not one of {', '.join(allowed)}")
    return chosen
