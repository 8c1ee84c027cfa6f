"""`echo --probe`: what a peer accepts, one answer per (SOP class, transfer syntax).

pynetdicom's acceptor (and DCMTK's) picks ONE transfer syntax per presentation
context, so a context that offers several syntaxes tells only which one the
peer prefers, not which others it would take. To learn the whole matrix the
probe proposes one context per (abstract syntax, transfer syntax) pair:

- 22 storage SOP classes x 9 transfer syntaxes = 198 pairs
- 7 query/retrieve models x 3 (uncompressed, deflated) = 21 pairs
- Verification x 2 = 2 pairs

221 pairs; an association carries at most 128 contexts (odd IDs 1-255), and
every association after the first also carries one Verification context as
an anchor (a peer that accepts none of the contexts proposed in an
association aborts it), so the probe needs 1 + ceil((221 - 128) / 127) = 2
associations (`association_count()` computes it).

For C-GET, SCP/SCU role selection is proposed for each storage class (we
offer to be SCU and SCP) and the peer's answer is collected: a peer that
does not answer role selection cannot send us C-GET results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medimg_cli.dimse.association import Target, open_association
from medimg_cli.errors import RefusedError

MAX_CONTEXTS = 128
VERIFICATION = "1.2.840.10008.1.1"

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"

# (UID, short column label, name)
TRANSFER_SYNTAXES: tuple[tuple[str, str, str], ...] = (
    (IMPLICIT, "Impl", "Implicit VR Little Endian"),
    (EXPLICIT, "Expl", "Explicit VR Little Endian"),
    (DEFLATED, "Defl", "Deflated Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.4.50", "JPEG", "JPEG Baseline (Process 1)"),
    ("1.2.840.10008.1.2.4.70", "JLSV1", "JPEG Lossless, SV1"),
    ("1.2.840.10008.1.2.4.80", "JLS", "JPEG-LS Lossless"),
    ("1.2.840.10008.1.2.4.90", "J2KL", "JPEG 2000 Lossless"),
    ("1.2.840.10008.1.2.5", "RLE", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.201", "HTJ2KL", "HTJ2K Lossless"),
)
_QR_SYNTAXES = (IMPLICIT, EXPLICIT, DEFLATED)

STORAGE_CLASSES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.2", "CT Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.4", "MR Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.1", "CR Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.1.1", "DX Image Storage - For Presentation"),
    ("1.2.840.10008.5.1.4.1.1.1.2", "MG Image Storage - For Presentation"),
    ("1.2.840.10008.5.1.4.1.1.6.1", "US Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.20", "NM Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.128", "PET Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.12.1", "XA Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.12.2", "RF Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.481.1", "RT Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.481.2", "RT Dose Storage"),
    ("1.2.840.10008.5.1.4.1.1.481.3", "RT Structure Set Storage"),
    ("1.2.840.10008.5.1.4.1.1.481.5", "RT Plan Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.11", "Basic Text SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.22", "Enhanced SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "Segmentation Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.59", "Key Object Selection Document Storage"),
    ("1.2.840.10008.5.1.4.1.1.11.1", "Grayscale Softcopy Presentation State Storage"),
    ("1.2.840.10008.5.1.4.1.1.104.1", "Encapsulated PDF Storage"),
)
QR_MODELS: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.2.1.1", "Patient Root Q/R - FIND"),
    ("1.2.840.10008.5.1.4.1.2.1.2", "Patient Root Q/R - MOVE"),
    ("1.2.840.10008.5.1.4.1.2.1.3", "Patient Root Q/R - GET"),
    ("1.2.840.10008.5.1.4.1.2.2.1", "Study Root Q/R - FIND"),
    ("1.2.840.10008.5.1.4.1.2.2.2", "Study Root Q/R - MOVE"),
    ("1.2.840.10008.5.1.4.1.2.2.3", "Study Root Q/R - GET"),
    ("1.2.840.10008.5.1.4.31", "Modality Worklist - FIND"),
)

# A-ASSOCIATE-AC presentation context result (PS3.8 9.3.3.2)
RESULTS = {
    0: "accepted",
    1: "rejected by the user (no reason given)",
    2: "rejected by the provider (no reason given)",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}
NOT_ANSWERED = "not answered (the association ended before negotiation)"

Pair = tuple[str, str]  # (abstract syntax, transfer syntax)


def probe_pairs() -> list[tuple[str, str, str, str]]:
    """Every (abstract syntax, its name, kind, transfer syntax) the probe proposes."""
    pairs = [(VERIFICATION, "Verification", "verification", ts) for ts in (IMPLICIT, EXPLICIT)]
    for uid, name in STORAGE_CLASSES:
        pairs += [(uid, name, "storage", ts) for ts, _, _ in TRANSFER_SYNTAXES]
    for uid, name in QR_MODELS:
        pairs += [(uid, name, "query-retrieve", ts) for ts in _QR_SYNTAXES]
    return pairs


def plan_associations(pairs: Sequence[Pair], limit: int = MAX_CONTEXTS) -> list[list[Pair]]:
    """Split `pairs` into associations of at most `limit` contexts.

    Every association but the first starts with a Verification / Implicit VR
    context (the first has it among the pairs), so that each is established
    even when the peer rejects everything else in it.
    """
    anchor = (VERIFICATION, IMPLICIT)
    rest = [p for p in pairs if p != anchor]
    plans: list[list[Pair]] = []
    while rest or not plans:
        room = limit - 1
        plans.append([anchor, *rest[:room]])
        rest = rest[room:]
    return plans


def association_count(n_pairs: int, limit: int = MAX_CONTEXTS) -> int:
    """How many associations `n_pairs` (one of them the anchor) take: 1 + ceil(...)."""
    if n_pairs <= limit:
        return 1
    return 1 + math.ceil((n_pairs - limit) / (limit - 1))


@dataclass(frozen=True)
class Cell:
    """The peer's answer for one (abstract syntax, transfer syntax) context."""

    abstract_syntax: str
    name: str
    kind: str
    transfer_syntax: str
    accepted: bool
    result: str
    association: int


@dataclass(frozen=True)
class RoleAnswer:
    """SCP/SCU role selection for one storage class (what C-GET needs)."""

    sop_class: str
    name: str
    answered: bool
    scu_role: bool | None
    scp_role: bool | None

    @property
    def get_possible(self) -> bool:
        """The peer agreed that we act as storage SCP: it can send C-GET results."""
        return bool(self.answered and self.scp_role)


@dataclass
class ProbeResult:
    """Everything the probe learnt about the peer."""

    peer_ae: str = ""
    peer_max_pdu: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    associations: int = 0
    cells: list[Cell] = field(default_factory=list)
    roles: list[RoleAnswer] = field(default_factory=list)
    seconds: float = 0.0

    def accepted(self, abstract_syntax: str) -> list[str]:
        """The transfer syntaxes accepted for `abstract_syntax`."""
        return [c.transfer_syntax for c in self.cells
                if c.abstract_syntax == abstract_syntax and c.accepted]

    def as_dict(self) -> dict[str, Any]:
        names = {uid: name for uid, _, name in TRANSFER_SYNTAXES}
        rows: dict[str, dict[str, Any]] = {}
        for c in self.cells:
            row = rows.setdefault(c.abstract_syntax, {
                "abstract_syntax": c.abstract_syntax, "name": c.name, "kind": c.kind,
                "transfer_syntaxes": {}})
            row["transfer_syntaxes"][c.transfer_syntax] = {
                "name": names.get(c.transfer_syntax, c.transfer_syntax),
                "accepted": c.accepted, "result": c.result}
        return {
            "peer_ae": self.peer_ae,
            "peer_max_pdu": self.peer_max_pdu,
            "peer_implementation_class_uid": self.implementation_class_uid,
            "peer_implementation_version_name": self.implementation_version_name,
            "associations": self.associations,
            "proposed_contexts": len(self.cells),
            "matrix": list(rows.values()),
            "role_selection": [
                {"sop_class": r.sop_class, "name": r.name, "answered": r.answered,
                 "scu_role": r.scu_role, "scp_role": r.scp_role,
                 "c_get_possible": r.get_possible}
                for r in self.roles
            ],
            "seconds": round(self.seconds, 6),
        }


def probe(target: Target, *, ext_neg: Sequence[Any] = ()) -> ProbeResult:
    """Propose every pair in as few associations as possible; collect the answers."""
    import time

    from pynetdicom import evt
    from pynetdicom.presentation import build_role

    pairs = probe_pairs()
    info = {(uid, ts): (name, kind) for uid, name, kind, ts in pairs}
    storage = dict(STORAGE_CLASSES)
    result = ProbeResult()
    answers: dict[Pair, Cell] = {}
    roles: dict[str, RoleAnswer] = {}
    started = time.perf_counter()
    plans = plan_associations([(uid, ts) for uid, _, _, ts in pairs])
    result.associations = len(plans)
    for number, plan in enumerate(plans, start=1):
        grabbed: list[Any] = []

        def grab(event: Any, into: list[Any] = grabbed) -> None:
            into.append(event.assoc)

        in_plan = list(dict.fromkeys(uid for uid, _ in plan if uid in storage))
        roles_rq = [build_role(uid, scu_role=True, scp_role=True) for uid in in_plan]
        contexts = [(uid, (ts,)) for uid, ts in plan]
        try:
            with open_association(target, contexts, ext_neg=[*ext_neg, *roles_rq],
                                  handlers=[(evt.EVT_ACSE_RECV, grab)]) as assoc:
                _collect(assoc, number, info, answers, result)
                _collect_roles(assoc, in_plan, storage, roles)
        except RefusedError:
            # A peer that accepts none of an association's contexts: the answers
            # are in the A-ASSOCIATE-AC all the same. Anything else is a real failure.
            if not grabbed or grabbed[0].accepted_contexts or not grabbed[0].rejected_contexts:
                raise
            _collect(grabbed[0], number, info, answers, result)
    result.seconds = time.perf_counter() - started
    for uid, ts in [(uid, ts) for uid, _, _, ts in pairs]:
        if (uid, ts) not in answers:
            name, kind = info[(uid, ts)]
            answers[(uid, ts)] = Cell(uid, name, kind, ts, False, NOT_ANSWERED, 0)
    result.cells = [answers[(uid, ts)] for uid, _, _, ts in pairs]
    result.roles = [roles[uid] for uid, _ in STORAGE_CLASSES if uid in roles]
    return result


def _collect(assoc: Any, number: int, info: dict[Pair, tuple[str, str]],
             answers: dict[Pair, Cell], result: ProbeResult) -> None:
    acceptor = assoc.acceptor
    if number == 1:
        result.peer_ae = str(acceptor.ae_title).strip()
        result.peer_max_pdu = int(acceptor.maximum_length or 0)
        result.implementation_class_uid = str(acceptor.implementation_class_uid or "")
        result.implementation_version_name = str(acceptor.implementation_version_name or "")
    proposed = {cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.requestor.requested_contexts}
    for cx in [*assoc.accepted_contexts, *assoc.rejected_contexts]:
        pair = proposed.get(cx.context_id)
        if pair is None or pair in answers or pair not in info:
            continue
        code = int(cx.result if cx.result is not None else 2)
        name, kind = info[pair]
        answers[pair] = Cell(pair[0], name, kind, pair[1], code == 0,
                             RESULTS.get(code, f"result {code}"), number)


def _collect_roles(assoc: Any, uids: Sequence[str], storage: dict[str, str],
                   roles: dict[str, RoleAnswer]) -> None:
    answered = assoc.acceptor.role_selection
    for uid in uids:
        if uid in roles:
            continue
        item = answered.get(uid)
        if item is None:
            roles[uid] = RoleAnswer(uid, storage[uid], False, None, None)
        else:
            roles[uid] = RoleAnswer(uid, storage[uid], True, bool(item.scu_role),
                                    bool(item.scp_role))
