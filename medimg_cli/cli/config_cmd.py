"""`medimg config init|path|show|validate` and `medimg profiles`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from medimg_cli.cli.options import FormatOpt, check_format, runtime

config_app = typer.Typer(
    name="config",
    help="Write, locate, show and check the config file.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@config_app.command("init")
def init(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing file (kept as .bak).")
    ] = False,
) -> None:
    """Write a commented starter config (never overwrites without --force)."""
    from medimg_cli.config import resolve_config_path, sample_config, write_new_config

    rt = runtime(ctx)
    path = resolve_config_path(rt.config_path)
    write_new_config(path, sample_config(), force=force)
    rt.stdout.write(f"{path}\n")
    rt.info(f"wrote a starter config to {path}; edit its profiles, then `medimg config validate`")


@config_app.command("path")
def path_command(ctx: typer.Context) -> None:
    """Print the path of the config file in use (whether or not it exists)."""
    from medimg_cli.config import resolve_config_path

    rt = runtime(ctx)
    path = resolve_config_path(rt.config_path)
    rt.stdout.write(f"{path}\n")
    if not path.exists():
        rt.info("(it does not exist yet: `medimg config init` writes one)")


@config_app.command("show")
def show(
    ctx: typer.Context,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="toml | json.")
    ] = "toml",
) -> None:
    """Show the effective settings: defaults filled in, secrets never shown."""
    import dataclasses

    from medimg_cli.errors import UsageError

    rt = runtime(ctx)
    config = rt.config()
    data: dict[str, Any] = {
        "defaults": dataclasses.asdict(config.defaults),
        "profiles": {name: _masked(p.effective()) for name, p in config.profiles.items()},
    }
    if fmt == "json":
        from medimg_cli.output import write_json

        write_json(data, rt.stdout)
    elif fmt == "toml":
        import tomli_w

        rt.stdout.write(f"# {config.path}" + ("" if config.exists else " (not found)") + "\n")
        rt.stdout.write(tomli_w.dumps(data))
    else:
        raise UsageError(f"--format '{fmt}' is not one of toml, json")


def _masked(values: dict[str, Any]) -> dict[str, Any]:
    """Name where each secret comes from, never its value."""
    import os

    out = dict(values)
    for key, value in values.items():
        if isinstance(value, dict):
            out[key] = _masked(value)
        elif key.endswith("_env") and isinstance(value, str):
            out[key] = f"{value} ({'set' if value in os.environ else 'not set'})"
    return out


@config_app.command("validate")
def validate(ctx: typer.Context) -> None:
    """Check the config file; exit 2 with the file, profile and key when it is wrong."""
    from medimg_cli.errors import ConfigError

    rt = runtime(ctx)
    config = rt.config()
    if not config.exists:
        raise ConfigError(
            f"no config file at {config.path}",
            hint="write one with `medimg config init`",
        )
    n = len(config.profiles)
    rt.stdout.write(f"{config.path}: OK, {n} profile{'s' if n != 1 else ''}\n")


def profiles_command(
    ctx: typer.Context,
    fmt: FormatOpt = None,
    vendors: Annotated[
        bool, typer.Option("--vendors", help="List the vendor presets (vendor = \"...\") "
                           "and what each changes, with sources.")
    ] = False,
) -> None:
    """List the profiles: name, type, endpoint."""
    from medimg_cli.output import write_json

    rt = runtime(ctx)
    if vendors:
        _vendors(rt, check_format(fmt, rt, ("table", "json", "jsonl")))
        return
    config = rt.config()
    fmt = check_format(fmt, rt, ("table", "json", "jsonl", "csv"))
    rows = [
        {"name": p.name, "type": p.type, "endpoint": p.endpoint, "vendor": p.get("vendor", "")}
        for p in config.profiles.values()
    ]
    if fmt == "json":
        write_json(rows, rt.stdout)
    elif fmt == "jsonl":
        import json

        for row in rows:
            rt.stdout.write(json.dumps(row) + "\n")
    elif fmt == "csv":
        import csv

        writer = csv.DictWriter(rt.stdout, fieldnames=["name", "type", "endpoint", "vendor"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        if not rows:
            rt.info(f"no profiles in {config.path}" + ("" if config.exists else
                    " (not found: `medimg config init` writes a starter config)"))
            return
        width = max(len(r["name"]) for r in rows)
        for row in rows:
            vendor = f"  ({row['vendor']})" if row["vendor"] else ""
            line = f"{row['name']:<{width}}  {row['type']:<8}  {row['endpoint']}{vendor}"
            rt.stdout.write(line + "\n")


def _vendors(rt: Any, fmt: str) -> None:
    """`profiles --vendors`: each preset, its defaults and quirks, each with its source."""
    import json

    from medimg_cli.presets import describe

    presets = describe()
    if fmt == "json":
        rt.stdout.write(json.dumps(presets, indent=2) + "\n")
        return
    if fmt == "jsonl":
        for preset in presets:
            rt.stdout.write(json.dumps(preset) + "\n")
        return
    width = max(len(p["name"]) for p in presets)
    for p in presets:
        changes = len(p["defaults"]) + len(p["quirks"])
        summary = f"{changes} documented change{'s' if changes != 1 else ''}" if changes \
            else "no changes"
        rt.stdout.write(f"{p['name']:<{width}}  {p['kind']:<4}  {p['title']} ({summary})\n")
        for d in p["defaults"]:
            only = f" (only when the profile has {d['only_with']})" if "only_with" in d else ""
            rt.stdout.write(f"{'':<{width}}    default {d['profile_type']} {d['key']} = "
                            f"{json.dumps(d['value'])}{only}\n")
            rt.stdout.write(f"{'':<{width}}      source: {d['source']}\n")
        for q in p["quirks"]:
            rt.stdout.write(f"{'':<{width}}    quirk ({q['topic']}): {q['text']}\n")
            rt.stdout.write(f"{'':<{width}}      source: {q['source']}\n")
        if p["implementation_class_uids"]:
            rt.stdout.write(f"{'':<{width}}    recognised by implementation class UID "
                            + ", ".join(p["implementation_class_uids"]) + "\n")
        if p["note"]:
            rt.stdout.write(f"{'':<{width}}    note: {p['note']}\n")
