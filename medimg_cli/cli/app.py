"""The `medimg` application: global options, command registration, and `main`.

`main` is the one place where exceptions become exit codes and messages.
Nothing heavy is imported at module level: `medimg --help` and shell
completion must stay fast, so protocol libraries load inside the commands.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated, Any, NoReturn

import typer

from medimg_cli import __version__
from medimg_cli.cli.config_cmd import config_app, profiles_command
from medimg_cli.cli.echo import echo_command
from medimg_cli.cli.fhir_cmd import fhir_app
from medimg_cli.cli.find import find_command
from medimg_cli.cli.login_cmd import login_command, logout_command, token_command
from medimg_cli.cli.retrieve_cmd import get_command, move_command
from medimg_cli.cli.runtime import Runtime
from medimg_cli.cli.sandbox_cmd import sandbox_command
from medimg_cli.cli.stow import stow_command
from medimg_cli.cli.wado_cmd import wadoget_command
from medimg_cli.errors import ExitCode, Interrupted, MedimgError

app = typer.Typer(
    name="medimg",
    help="PACS query/retrieve (DICOM DIMSE, DICOMweb) and EHR lookup (FHIR R4) by named "
    "profiles.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"medimg {__version__}\n")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            metavar="PATH",
            help="Config file (default: $MEDIMG_CONFIG, then `medimg config path`).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        int,
        typer.Option("--verbose", "-v", count=True, help="-v association/HTTP detail, -vv more."),
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
    trace_file: Annotated[
        str | None,
        typer.Option("--trace", metavar="FILE", show_default=False,
                     help="Write the whole exchange (associations, DIMSE messages, HTTP) to "
                     "FILE, with timestamps; PHI hashed, secrets hidden: fit for a vendor. "
                     "An earlier medimg trace in FILE is replaced; any other file is left "
                     "alone (error)."),
    ] = None,
    no_redact: Annotated[
        bool,
        typer.Option("--no-redact", help="Keep patient data (PHI) in --trace and -vv output; "
                     "secrets stay hidden."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """medimg talks to PACS and EHRs from one terminal.

    Exit codes: 0 success, 1 internal error, 2 usage or configuration,
    3 could not connect, 4 refused, 5 remote failure, 6 partial, 130 interrupted.
    """
    rt = Runtime(config_path=config, verbose=verbose, quiet=quiet)
    ctx.obj = rt
    if trace_file is not None:
        _setup_trace(trace_file, redact=not no_redact)
    if verbose:
        _setup_logging(verbose, redact=not no_redact)
    elif not quiet:
        _setup_warnings()
    else:
        import logging

        # -q: not even Python's last-resort handler may print a warning.
        logging.getLogger("medimg").addHandler(logging.NullHandler())


class _WarningFormatter:
    """`medimg: warning: ...`, one line, like the error lines."""

    def format(self, record: Any) -> str:
        return f"medimg: warning: {record.getMessage()}"


def _setup_warnings() -> None:
    """Without -v, medimg's own warnings (e.g. TLS verification off) still reach stderr."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_WarningFormatter())  # type: ignore[arg-type]
    logger = logging.getLogger("medimg")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


def _setup_trace(path: str, *, redact: bool) -> None:
    """--trace FILE: open the trace; the fast paths that skip pynetdicom's events step aside."""
    import os

    from medimg_cli import trace
    from medimg_cli.errors import UsageError

    try:
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            with open(path, "rb") as existing:
                if not existing.read(9) == b"# medimg ":
                    raise UsageError(f"--trace {path}: the file exists and is not a medimg "
                                     "trace; not overwriting it",
                                     hint="give a new file name, or remove the file first")
        trace.start(path, redact=redact)
    except OSError as exc:
        raise UsageError(f"--trace {path}: cannot write there: {exc.strerror or exc}") from None
    from medimg_cli.dimse import fastpath

    fastpath.disable()


def _setup_logging(verbose: int, *, redact: bool = True) -> None:
    import logging

    from medimg_cli import trace

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    # -vv logs are shared with vendors: PHI hashed as in traces, secrets hidden.
    handler.addFilter(trace.RedactingFilter(trace.redactor_for(redact)))
    logging.getLogger("medimg").addHandler(handler)
    logging.getLogger("medimg").setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    if verbose >= 2:
        # pynetdicom's own association and DIMSE log. Identifiers stay out of it
        # (LOG_*_IDENTIFIERS are off): -vv logs are meant to be shared.
        from medimg_cli.dimse.association import tune

        tune()
        from pynetdicom import _config

        from medimg_cli.dimse import fastpath

        fastpath.disable()
        _config.LOG_HANDLER_LEVEL = "standard"
        logging.getLogger("pynetdicom").addHandler(handler)
        logging.getLogger("pynetdicom").setLevel(logging.DEBUG)


app.command("echo", help="Check that a peer answers (C-ECHO) and how the association goes.")(
    echo_command
)
app.command("find", help="Query for patients, studies, series or instances.")(find_command)
app.command("move", help="Retrieve by C-MOVE (to medimg itself, or --dest AET).")(move_command)
app.command("get", help="Retrieve by C-GET (no inbound port needed).")(get_command)
app.command("wadoget", help="Retrieve by WADO-RS from a DICOMweb profile.")(wadoget_command)
app.command("stow", help="Send DICOM files and folders to a PACS (C-STORE).")(stow_command)
app.command("sandbox", help="Serve a local PACS, DICOMweb and FHIR server to try medimg on.")(
    sandbox_command
)
app.add_typer(config_app, name="config")
app.add_typer(fhir_app, name="fhir")
app.command("profiles", help="List the profiles: name, type, endpoint.")(profiles_command)
app.command("login", help="Log in: store a secret in the keyring, or run the OAuth flow.")(
    login_command
)
app.command("token", help="Show a profile's login (expiry, scopes); never the token unless "
            "asked.")(token_command)
app.command("logout", help="Log out: revoke the OAuth tokens, remove the keyring entries.")(
    logout_command
)


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise Interrupted("interrupted")


def report_error(message: str, hint: str | None = None) -> None:
    """One line on stderr: what is wrong, and what to do."""
    line = f"medimg: {message}" + (f"; {hint}" if hint else "")
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (exceptions mapped here, and only here)."""
    previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        result = app(args=argv, prog_name="medimg", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except MedimgError as exc:
        _trace_error(exc.message, exc.hint)
        report_error(exc.message, exc.hint)
        return int(exc.exit_code)
    except BrokenPipeError:
        # The reader of our stdout went away (`medimg find ... | head`): stop quietly.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return int(ExitCode.OK)
    except Exception as exc:
        shown = getattr(exc, "show", None)
        code = getattr(exc, "exit_code", None)
        if callable(shown) and isinstance(code, int):  # a Click usage error
            message = getattr(exc, "format_message", None)
            text = str(message()).strip().rstrip(".") if callable(message) else ""
            if code == ExitCode.USAGE and text and "\n" not in text:  # one line, like ours
                ctx = getattr(exc, "ctx", None)
                where = getattr(ctx, "command_path", None) or "medimg"
                report_error(text, f"see `{where} --help`")
                return code
            shown()
            return code
        if type(exc).__name__ == "Abort":
            return int(ExitCode.INTERRUPTED)
        import logging

        logging.getLogger("medimg").debug("internal error", exc_info=True)
        report_error(
            f"internal error: {type(exc).__name__}: {exc}",
            "this is a bug; rerun with -vv and report the output",
        )
        return int(ExitCode.INTERNAL)
    finally:
        signal.signal(signal.SIGINT, previous)
        if "medimg_cli.trace" in sys.modules:
            sys.modules["medimg_cli.trace"].stop()


def _trace_error(message: str, hint: str | None) -> None:
    """The error line also ends the trace (redacted like the rest)."""
    if "medimg_cli.trace" not in sys.modules:
        return
    from medimg_cli import trace

    current = trace.current()
    if current is not None:
        text = current.redactor.text(f"medimg: {message}" + (f"; {hint}" if hint else ""))
        current.entry("ERROR", text)


def main() -> NoReturn:
    """Console-script entry point."""
    sys.exit(run())
