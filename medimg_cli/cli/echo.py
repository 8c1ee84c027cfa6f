"""`medimg echo PROFILE`: is the peer there, and does it accept us?"""

from __future__ import annotations

from typing import Annotated

import typer

from medimg_cli.cli.dimse_common import (
    IdentityResponseOpt,
    UserIdentityOpt,
    UsernameOpt,
    dimse_target,
    identity_options,
    show_association_report,
    show_identity_answer,
)
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
from medimg_cli.cli.runtime import Runtime
from medimg_cli.config import Profile


def echo_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    *,
    count: Annotated[
        int, typer.Option("--count", "-c", min=1, help="Number of C-ECHOs to send.")
    ] = 1,
    interval: Annotated[
        float, typer.Option("--interval", "-i", min=0, help="Seconds between C-ECHOs.")
    ] = 1.0,
    timeout: TimeoutOpt = None,
    calling_aet: CallingAetOpt = None,
    called_aet: CalledAetOpt = None,
    timing: Annotated[
        bool,
        typer.Option("--timing", help="Time each phase: DNS, TCP connect, A-ASSOCIATE "
                     "round trip, C-ECHO round trips, release."),
    ] = False,
    probe: Annotated[
        bool,
        typer.Option("--probe", help="Propose the common storage SOP classes and Q/R models, "
                     "one context per transfer syntax, and print what the peer accepts "
                     "(matrix, max PDU, implementation, C-GET role selection)."),
    ] = False,
    move_check: Annotated[
        bool,
        typer.Option("--move-check", help="Move pre-flight: can our receive port be bound, "
                     "does the PACS know our AE as a move destination, does one instance "
                     "arrive; the common causes of images that never arrive, explained."),
    ] = False,
    receive_port: Annotated[
        int | None,
        typer.Option("--port", min=0, max=65535, metavar="PORT",
                     help="With --move-check: our receive port (default: receive_port).",
                     show_default=False),
    ] = None,
    sample: Annotated[
        bool,
        typer.Option("--sample/--no-sample", help="With --move-check: move one instance "
                     "found by C-FIND to our receiver (received and discarded)."),
    ] = True,
    user_identity: UserIdentityOpt = None,
    username: UsernameOpt = None,
    identity_response: IdentityResponseOpt = None,
    fmt: FormatOpt = None,
) -> None:
    """Check that a peer answers: C-ECHO for a DIMSE profile, GET metadata for FHIR.

    Prints each round trip; -v adds the association report (accepted
    contexts, the peer's max PDU, implementation class UID and version).
    """
    from medimg_cli.dimse.association import AssociationReport
    from medimg_cli.dimse.echo import EchoResult, echo
    from medimg_cli.output import write_json

    rt = runtime(ctx)
    profile = rt.profile(profile_name)
    require_type(profile, "echo", ("dimse", "dicomweb", "fhir"))
    fmt = check_format(fmt, rt, ("table", "json", "jsonl"))
    if (probe or move_check) and profile.type != "dimse":
        from medimg_cli.errors import UsageError

        raise UsageError(f"--probe and --move-check need a dimse profile; '{profile.name}' "
                         f"is a {profile.type} profile")
    dimse_only = [opt for opt, given in (
        ("--aet", calling_aet), ("--aec", called_aet), ("--timing", timing),
        ("--user-identity", user_identity), ("--username", username),
        ("--[no-]identity-response", identity_response is not None)) if given]
    if dimse_only and profile.type != "dimse":
        from medimg_cli.errors import UsageError

        raise UsageError(f"{', '.join(dimse_only)}: only for DICOM associations; "
                         f"'{profile.name}' is a {profile.type} profile",
                         hint="leave them out, or use a dimse profile")
    if receive_port is not None and not move_check:
        from medimg_cli.errors import UsageError

        raise UsageError("--port goes with --move-check", hint="add --move-check, or leave "
                         "--port out (other commands take receive_port from the profile)")
    if profile.type == "fhir":
        from medimg_cli.cli.fhir_cmd import fhir_echo

        fhir_echo(rt, profile, count, interval, timeout, fmt)
        return
    if profile.type == "dicomweb":
        _http_echo(rt, profile, count, interval, timeout, fmt)
        return
    target = dimse_target(profile, calling_aet=calling_aet, called_aet=called_aet,
                          timeout=timeout, user_identity=identity_options(
                              profile, user_identity, username, identity_response))
    peer = f"{target.called_aet}@{target.host}:{target.port}"
    if probe or move_check:
        from medimg_cli.cli.probe_view import run_diagnosis

        run_diagnosis(rt, profile, target, fmt, probe=probe, move_check=move_check,
                      receive_port=receive_port, sample=sample)
        return
    reports: list[AssociationReport] = []

    def show(result: EchoResult) -> None:
        if result.seq == 1 and reports:
            show_association_report(rt, reports[0], target.calling_aet, peer)
            show_identity_answer(rt, fmt, reports[0])
        ms = result.seconds * 1000
        if fmt == "table":
            rt.stdout.write(
                f"C-ECHO {peer}: seq={result.seq} status=0x{result.status:04X} "
                f"time={ms:.2f} ms\n"
            )
        elif fmt == "jsonl":
            import json

            rt.stdout.write(json.dumps({"peer": peer, "seq": result.seq,
                                        "status": result.status, "ms": round(ms, 3)}) + "\n")
        rt.stdout.flush()

    results = echo(target, count=count, interval=interval, on_result=show, report=reports)
    times = [r.seconds * 1000 for r in results]
    if fmt == "json":
        write_json(
            {
                "profile": profile.name,
                "peer": peer,
                "calling_aet": target.calling_aet,
                "association": reports[0].as_dict() if reports else None,
                "echoes": [
                    {"seq": r.seq, "status": r.status, "ms": round(r.seconds * 1000, 3)}
                    for r in results
                ],
            },
            rt.stdout,
        )
    if timing and reports and fmt != "json":  # json: in the association report
        _show_timing(rt, fmt, reports[0].timing, times)
    if count > 1:
        rt.info(
            f"{len(results)} C-ECHOs to {peer}: round trip min/avg/max = "
            f"{min(times):.2f}/{sum(times) / len(times):.2f}/{max(times):.2f} ms"
        )


def _http_echo(rt: Runtime, profile: Profile, count: int, interval: float,
               timeout: float | None, fmt: str) -> None:
    """DICOMweb echo: `GET studies?limit=1`, timed, `count` times."""
    import json
    import time

    from medimg_cli.dicomweb.client import open_client
    from medimg_cli.dicomweb.qido import dicomweb_echo

    url = str(profile.get("url"))
    results = []
    with open_client(profile, timeout=timeout) as client:
        for seq in range(1, count + 1):
            if seq > 1 and interval > 0:
                time.sleep(interval)
            status, seconds = dicomweb_echo(client)
            ms = seconds * 1000
            results.append({"url": url, "seq": seq, "status": status, "ms": round(ms, 3)})
            if fmt == "table":
                rt.stdout.write(f"GET {url}/studies?limit=1: seq={seq} HTTP {status} "
                                f"time={ms:.2f} ms\n")
            elif fmt == "jsonl":
                rt.stdout.write(json.dumps(results[-1]) + "\n")
            rt.stdout.flush()
    if fmt == "json":
        rt.stdout.write(json.dumps({"profile": profile.name, "url": url, "echoes": results},
                                   indent=2) + "\n")


def _show_timing(rt: Runtime, fmt: str, phases: dict[str, float], echoes_ms: list[float]) -> None:
    """`--timing`: where an association's time goes, in ms."""
    import json

    rows = {
        "dns": phases.get("dns", 0.0) * 1000,
        "tcp_connect": phases.get("connect", 0.0) * 1000,
        **({"tls_handshake": phases["tls_handshake"] * 1000} if "tls_handshake" in phases else {}),
        "associate": phases.get("associate", 0.0) * 1000,
        "c_echo": sum(echoes_ms) / len(echoes_ms) if echoes_ms else 0.0,
        "release": phases.get("release", 0.0) * 1000,
    }
    if fmt == "table":
        labels = {"dns": "DNS lookup", "tcp_connect": "TCP connect",
                  "tls_handshake": "TLS handshake",
                  "associate": "A-ASSOCIATE round trip", "c_echo": "C-ECHO round trip (avg)",
                  "release": "A-RELEASE round trip"}
        for key, ms in rows.items():
            rt.stdout.write(f"{labels[key]:<26} {ms:9.2f} ms\n")
    else:
        rt.stdout.write(json.dumps({"timing_ms": {k: round(v, 3) for k, v in rows.items()}})
                        + "\n")
    rt.stdout.flush()
