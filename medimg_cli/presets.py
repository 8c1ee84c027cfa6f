"""Vendor presets: `vendor = "..."` in a profile.

A preset supplies defaults for keys a profile leaves out, and known quirks
that medimg shows as hints (in `echo --probe`, `echo --move-check`). Only
documented behaviour goes in: every default and quirk names its source (a
vendor's DICOM conformance statement or public developer documentation).
Where no documented fact was found the preset stays minimal and says so in
`note`: a guess in a preset would be repeated to every user as if it were
known.

`medimg profiles --vendors` lists the presets and what each changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medimg_cli.config import Profile


@dataclass(frozen=True)
class Default:
    """A default for one key of one profile type (`oauth.flow` for nested keys)."""

    profile_type: str
    key: str
    value: Any
    source: str
    # Applied only when the profile has this table (e.g. "oauth"): a default
    # must never turn a complete profile into an incomplete one.
    requires_table: str | None = None


@dataclass(frozen=True)
class Quirk:
    """Documented behaviour that changes what a user should do; `topic` says where it shows."""

    topic: str  # "probe" | "find" | "move" | "auth" | "any"
    text: str
    source: str


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    kind: str  # "pacs" | "ehr" | "any"
    defaults: tuple[Default, ...] = ()
    quirks: tuple[Quirk, ...] = ()
    # Implementation Class UIDs the vendor's conformance statement gives (for the probe).
    implementation_uids: tuple[tuple[str, str], ...] = ()
    note: str = ""
    sources: tuple[str, ...] = field(default=())


_EPIC_OAUTH = "https://fhir.epic.com/Documentation?docId=oauth2 (Backend Systems / JWTs)"
_EPIC_JKU = "https://fhir.epic.com/Developer/Management (notice on Backend Systems JKU)"
_CERNER_SMART = ("https://fhir-ehr-code.cerner.com/r4/{tenant}/.well-known/smart-configuration"
                 " and https://docs.oracle.com/en/industries/health/millennium-platform-apis/")
_GE_CS = ("GE Healthcare, Centricity PACS 3.0 DICOM Conformance Statement, direction "
          "2017753-209 rev 0.9 (2005), revision history")
_SIEMENS_CS = ("Siemens Healthcare, DICOM Conformance Statement syngo.plaza VB10B, rev. 1.0 "
               "(2015), Conformance Statement Overview, Table 1")
_FUJI_CS = ("FUJIFILM Medical Systems USA, Synapse DICOM Conformance Statement, document "
            "version 08 (ENG-0012397-A, 2008), revision history: version 07 / Synapse 3.2.0")
_NOT_FOUND = ("no documented default or quirk was found for this vendor (public conformance "
              "statements were not available to us): the preset only names the vendor")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("generic", "Standard DICOM / DICOMweb / FHIR, no vendor specifics", "any",
               note="the standards' behaviour; the same as no vendor key"),
        Preset(
            "ge-centricity", "GE Healthcare Centricity PACS", "pacs",
            implementation_uids=(("1.2.840.113619.6.94", _GE_CS),),
            note="no documented defaults found (no public DICOMweb or API-key documentation "
                 "for Centricity PACS): the probe recognises its Implementation Class UID",
            sources=(_GE_CS,),
        ),
        Preset("philips-intellispace", "Philips IntelliSpace PACS", "pacs", note=_NOT_FOUND),
        Preset(
            "siemens-syngo", "Siemens Healthineers syngo.plaza", "pacs",
            quirks=(
                Quirk("probe", "syngo.plaza runs several AEs; the Main AE stores and answers "
                      "query/retrieve but is only a Modality Worklist SCU: worklist queries go "
                      "to the separate Modality Worklist Provider AE (another called AE title)",
                      _SIEMENS_CS),
            ),
            note="no documented defaults found",
            sources=(_SIEMENS_CS,),
        ),
        Preset(
            "fujifilm-synapse", "Fujifilm Synapse PACS", "pacs",
            quirks=(
                Quirk("find", "C-FIND and Modality Worklist answers are limited to a maximum "
                      "number of rows (added in Synapse 3.2.0): a large query may come back "
                      "incomplete; narrow it (dates, modality)", _FUJI_CS),
            ),
            note="no documented defaults found",
            sources=(_FUJI_CS,),
        ),
        Preset("sectra-ids7", "Sectra IDS7 / Sectra PACS", "pacs", note=_NOT_FOUND),
        Preset(
            "epic", "Epic (Epic on FHIR)", "ehr",
            defaults=(
                # Backend apps use client_credentials with a signed JWT (SMART Backend Services).
                Default("fhir", "auth", "oauth", _EPIC_OAUTH, requires_table="oauth"),
                Default("fhir", "oauth.flow", "backend-services", _EPIC_OAUTH,
                        requires_table="oauth"),
                # Epic's examples and docs sign the JWT with RS384.
                Default("fhir", "oauth.alg", "RS384", _EPIC_OAUTH, requires_table="oauth"),
            ),
            quirks=(
                Quirk("auth", "a Backend Systems client ID obtains no token until the health "
                      "system's Epic Client Systems Administrator maps it to an Epic user",
                      _EPIC_OAUTH),
                Quirk("auth", "since 23 February 2026 Backend Systems apps enabled for a "
                      "customer need a JWK Set URL (JKU); a static public key is kept only "
                      "for existing licences", _EPIC_JKU),
                Quirk("auth", "the JWT's exp may be at most 5 minutes in the future",
                      _EPIC_OAUTH),
            ),
            sources=(_EPIC_OAUTH, _EPIC_JKU),
        ),
        Preset(
            "cerner", "Oracle Health (Cerner) Millennium FHIR R4", "ehr",
            defaults=(
                # The SMART configuration lists client_secret_basic (and private_key_jwt),
                # not client_secret_post.
                Default("fhir", "oauth.client_auth", "client_secret_basic", _CERNER_SMART,
                        requires_table="oauth"),
            ),
            quirks=(
                Quirk("auth", "every endpoint is tenant-scoped: the tenant id is a path "
                      "segment of the FHIR base URL and of the authorization server",
                      _CERNER_SMART),
            ),
            sources=(_CERNER_SMART,),
        ),
        Preset("allscripts", "Allscripts / Veradigm", "ehr", note=_NOT_FOUND),
        Preset("meditech", "MEDITECH Expanse", "ehr", note=_NOT_FOUND),
    )
}


def get_preset(name: str | None) -> Preset | None:
    """The preset called `name` (already validated by config), or None."""
    return PRESETS.get(name or "")


def apply_defaults(profile_type: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with the vendor preset's defaults for the keys it leaves out."""
    out = dict(values)
    preset = get_preset(values.get("vendor"))
    if preset is None:
        return out
    for default in preset.defaults:
        if default.profile_type != profile_type:
            continue
        if default.requires_table and not isinstance(out.get(default.requires_table), dict):
            continue
        table, _, key = default.key.rpartition(".")
        if table:
            nested = dict(out.get(table) or {})
            nested.setdefault(key, default.value)
            out[table] = nested
        else:
            out.setdefault(key, default.value)
    return out


def quirks_for(profile: Profile, *topics: str) -> list[str]:
    """The preset's quirks for `topics` as hint lines, each naming its source."""
    preset = get_preset(profile.get("vendor"))
    if preset is None:
        return []
    return [f"{preset.name}: {q.text} (source: {q.source})"
            for q in preset.quirks if q.topic in (*topics, "any")]


def identify(implementation_uid: str) -> list[str]:
    """Presets whose documented Implementation Class UID matches (for the probe)."""
    return [f"{p.name} ({source})" for p in PRESETS.values()
            for uid, source in p.implementation_uids
            if implementation_uid == uid or implementation_uid.startswith(uid + ".")]


def describe() -> list[dict[str, Any]]:
    """Every preset and what it changes, for `medimg profiles --vendors`."""
    return [
        {
            "name": p.name,
            "title": p.title,
            "kind": p.kind,
            "defaults": [{"profile_type": d.profile_type, "key": d.key, "value": d.value,
                          "source": d.source,
                          **({"only_with": f"an [{d.requires_table}] table"}
                             if d.requires_table else {})}
                         for d in p.defaults],
            "quirks": [{"topic": q.topic, "text": q.text, "source": q.source}
                       for q in p.quirks],
            "implementation_class_uids": [uid for uid, _ in p.implementation_uids],
            "note": p.note,
        }
        for p in PRESETS.values()
    ]
