"""C-ECHO: round trips over one association."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from medimg_cli.dimse.association import AssociationReport, Target, open_association
from medimg_cli.dimse.status import check_no_response, describe_status
from medimg_cli.errors import RemoteError

VERIFICATION = "1.2.840.10008.1.1"
_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


@dataclass(frozen=True)
class EchoResult:
    """One C-ECHO: its sequence number, round trip and DIMSE status."""

    seq: int
    seconds: float
    status: int


def echo(
    target: Target,
    *,
    count: int = 1,
    interval: float = 0.0,
    on_result: Callable[[EchoResult], None] | None = None,
    report: list[AssociationReport] | None = None,
) -> list[EchoResult]:
    """Send `count` C-ECHOs over one association, `interval` seconds apart."""
    results: list[EchoResult] = []
    with open_association(target, [(VERIFICATION, _SYNTAXES)], report=report) as assoc:
        for seq in range(1, count + 1):
            if seq > 1 and interval > 0:
                time.sleep(interval)
            started = time.perf_counter()
            status = assoc.send_c_echo(msg_id=seq % 65536)
            elapsed = time.perf_counter() - started
            check_no_response(status, assoc, target, "C-ECHO")
            code = int(status.Status)
            result = EchoResult(seq=seq, seconds=elapsed, status=code)
            results.append(result)
            if on_result is not None:
                on_result(result)
            if code != 0x0000:
                raise RemoteError(f"C-ECHO failed: {describe_status(code, 'echo')}")
    return results
