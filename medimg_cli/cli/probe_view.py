"""Rendering for `echo --probe` and `echo --move-check` (table, json, jsonl)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medimg_cli.cli.runtime import Runtime
    from medimg_cli.config import Profile
    from medimg_cli.dimse.association import Target
    from medimg_cli.dimse.movecheck import MoveCheckResult
    from medimg_cli.dimse.probe import ProbeResult

# One short code per context result, for the table.
_CODES = {
    "accepted": "yes",
    "abstract syntax not supported": "-as",
    "transfer syntaxes not supported": "-ts",
    "rejected by the user (no reason given)": "-usr",
    "rejected by the provider (no reason given)": "-prv",
}
_LEGEND = ("yes accepted   -ts transfer syntax not supported   -as abstract syntax (SOP "
           "class) not supported   -usr/-prv rejected, no reason   ?? not answered   "
           ". not proposed")


def render_probe(rt: Runtime, fmt: str, result: ProbeResult, peer: str, profile: str,
                 quirks: list[str]) -> None:
    """The accept/reject matrix, the peer's identity and the role selection answers."""
    from medimg_cli.dimse.probe import TRANSFER_SYNTAXES
    from medimg_cli.presets import identify

    doc = {"profile": profile, "peer": peer, **result.as_dict(),
           "identified_as": identify(result.implementation_class_uid), "vendor_quirks": quirks}
    if fmt == "json":
        rt.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    if fmt == "jsonl":
        for c in result.cells:
            rt.stdout.write(json.dumps({
                "abstract_syntax": c.abstract_syntax, "name": c.name, "kind": c.kind,
                "transfer_syntax": c.transfer_syntax, "accepted": c.accepted,
                "result": c.result}) + "\n")
        return
    out = rt.stdout.write
    version = result.implementation_version_name
    out(f"peer {peer} (answers as '{result.peer_ae}')\n")
    out(f"  implementation class UID {result.implementation_class_uid}"
        + (f", version name {version}" if version else "") + "\n")
    for match in identify(result.implementation_class_uid):
        out(f"  implementation class UID documented for vendor preset {match}\n")
    pdu = result.peer_max_pdu
    out(f"  max PDU {pdu if pdu else 'unlimited'}\n")
    out(f"  {len(result.cells)} presentation contexts (one per SOP class and transfer syntax) "
        f"in {result.associations} associations, {result.seconds:.2f} s\n\n")
    labels = [label for _, label, _ in TRANSFER_SYNTAXES]
    rows: dict[str, dict[str, str]] = {}
    for c in result.cells:
        rows.setdefault(c.name, {})[c.transfer_syntax] = _CODES.get(c.result, "??")
    width = max(len(n) for n in rows)
    out(f"{'':<{width}}  " + " ".join(f"{label:>6}" for label in labels) + "\n")
    for name, cells in rows.items():
        line = " ".join(f"{cells.get(uid, '.'):>6}" for uid, _, _ in TRANSFER_SYNTAXES)
        out(f"{name:<{width}}  {line}\n")
    out(f"\n{_LEGEND}\n")
    if result.roles:
        yes = [r for r in result.roles if r.get_possible]
        silent = [r for r in result.roles if not r.answered]
        out("\nSCP/SCU role selection for C-GET (we proposed SCU and SCP for each storage "
            "class):\n")
        if len(yes) == len(result.roles):
            out("  accepted for every storage class: the peer can send C-GET results to us\n")
        elif len(silent) == len(result.roles):
            out("  no answer for any storage class: the peer does not negotiate roles, so "
                "C-GET cannot deliver images (use move)\n")
        else:
            for r in result.roles:
                state = ("accepted" if r.get_possible else
                         "no answer" if not r.answered else
                         f"declined (SCU {r.scu_role}, SCP {r.scp_role})")
                out(f"  {r.name}: {state}\n")
    for quirk in quirks:
        out(f"\ndocumented vendor behaviour: {quirk}\n")
    rt.stdout.flush()


def render_move_check(rt: Runtime, fmt: str, result: MoveCheckResult, peer: str,
                      profile: str) -> None:
    """Each check with its verdict, then the common causes of images that never arrive."""
    doc: dict[str, Any] = {"profile": profile, "peer": peer, **result.as_dict()}
    if fmt == "json":
        rt.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    if fmt == "jsonl":
        for check in doc["checks"]:
            rt.stdout.write(json.dumps({"type": "check", **check}) + "\n")
        for cause in doc["causes"]:
            rt.stdout.write(json.dumps({"type": "cause", **cause}) + "\n")
        return
    out = rt.stdout.write
    out(f"move pre-flight: {peer} -> AE '{result.receive_aet}' on port "
        f"{result.receive_port}\n\n")
    marks = {"ok": "ok  ", "fail": "FAIL", "warn": "warn", "info": "info"}
    for check in result.checks:
        out(f"  [{marks[check.verdict]}] {check.name}: {check.detail}\n")
        if check.hint and check.verdict in ("fail", "warn"):
            out(f"         -> {check.hint}\n")
    out("\nwhy images never arrive (most common first):\n")
    for cause in result.causes:
        out(f"  [{cause.state:<9}] {cause.text}\n              -> {cause.hint}\n")
    rt.stdout.flush()


def run_diagnosis(rt: Runtime, profile: Profile, target: Target, fmt: str, *, probe: bool,
                  move_check: bool, receive_port: int | None, sample: bool) -> None:
    """`echo --probe` / `echo --move-check`: run, render, and exit with the problem found."""
    from medimg_cli.errors import UsageError
    from medimg_cli.presets import quirks_for

    if probe and move_check:
        raise UsageError("--probe and --move-check are separate diagnoses; give one of them")
    peer = f"{target.called_aet}@{target.host}:{target.port}"
    if probe:
        from medimg_cli.dimse.probe import probe as run_probe

        result = run_probe(target)
        quirks = quirks_for(profile, "probe", "find", "move")
        render_probe(rt, fmt, result, peer, profile.name, quirks)
        return
    from medimg_cli.dimse.movecheck import move_check as run_move_check

    port = receive_port if receive_port is not None else profile.receive_port
    from medimg_cli.cli.dimse_common import tls_settings

    receive_tls = tls_settings(profile) if profile.get("receive_tls", False) else None
    checked = run_move_check(target, receive_port=port, sample=sample,
                             quirks=quirks_for(profile, "move"), receive_tls=receive_tls)
    render_move_check(rt, fmt, checked, peer, profile.name)
    if checked.problem is not None:
        raise checked.problem
