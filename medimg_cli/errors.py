"""The exceptions medimg raises, each carrying its exit code.

Protocol packages translate the errors of the libraries below them (pynetdicom,
httpx, keyring, the OS) into these at their edge, so that the command line
sees only medimg errors and turns them into exit codes in one place.

    MedimgError
    ├── UsageError ............... 2  bad option or argument
    │   └── ConfigError .......... 2  config file, profile or key is wrong
    ├── ConnectError ............. 3  DNS, connection refused, connect timeout
    ├── RefusedError ............. 4  association rejected/aborted, 401/403
    ├── RemoteError .............. 5  the peer answered with a failure
    ├── PartialError ............. 6  some sub-operations failed
    └── Interrupted .............. 130 Ctrl-C
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of every medimg command (DESIGN.md, "Exit codes")."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONNECT = 3
    REFUSED = 4
    REMOTE = 5
    PARTIAL = 6
    INTERRUPTED = 130


class MedimgError(Exception):
    """Base of every error medimg reports; `message` is one line, `hint` says what to do."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(MedimgError):
    """A bad option, argument or combination of them."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """The config file, a profile or a key in it is wrong or missing."""


class ConnectError(MedimgError):
    """The peer could not be reached: DNS, refused, connect timeout, TLS handshake."""

    exit_code = ExitCode.CONNECT


class RefusedError(MedimgError):
    """The peer refused us: association rejected or aborted, HTTP 401/403."""

    exit_code = ExitCode.REFUSED


class RemoteError(MedimgError):
    """The peer reported a failure: DIMSE failure status, HTTP error."""

    exit_code = ExitCode.REMOTE


class PartialError(MedimgError):
    """Some sub-operations failed and the rest succeeded."""

    exit_code = ExitCode.PARTIAL


class Interrupted(MedimgError):
    """The user pressed Ctrl-C."""

    exit_code = ExitCode.INTERRUPTED
