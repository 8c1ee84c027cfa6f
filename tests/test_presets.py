"""Vendor presets: defaults for keys a profile leaves out, documented quirks as hints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli_helpers import medimg, write_config
from peers import Orthanc

from medimg_cli.config import VENDORS
from medimg_cli.presets import PRESETS, apply_defaults

FHIR = 'type = "fhir"\nurl = "https://ehr.example.org/api/FHIR/R4"\n'


def _effective(tmp_path: Path, toml: str) -> dict[str, Any]:
    config = write_config(tmp_path / "c.toml", toml)
    result = medimg("config", "show", "--format", "json", config=config)
    assert result.code == 0, result.stderr
    profile: dict[str, Any] = json.loads(result.stdout)["profiles"]["p"]
    return profile


def test_profiles_vendors_lists_all_ten_with_sources(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", "")
    result = medimg("profiles", "--vendors", "--format", "json", config=config)
    assert result.code == 0, result.stderr
    presets = json.loads(result.stdout)
    assert [p["name"] for p in presets] == list(VENDORS) == list(PRESETS)
    assert len(presets) == 10
    for preset in presets:
        # Only documented behaviour: every default and quirk names where it comes from,
        # and a preset without any says so.
        assert all(d["source"] for d in preset["defaults"] + preset["quirks"]), preset["name"]
        assert preset["defaults"] or preset["quirks"] or preset["note"], preset["name"]
    table = medimg("profiles", "--vendors", "--format", "table", config=config)
    assert table.code == 0
    names = [line.split()[0] for line in table.stdout.splitlines() if not line.startswith(" ")]
    assert names == list(VENDORS)
    assert "default fhir oauth.flow = \"backend-services\"" in table.stdout
    assert "source: https://fhir.epic.com/" in table.stdout


def test_epic_preset_fills_backend_services_oauth_when_left_out(tmp_path: Path) -> None:
    shown = _effective(tmp_path, '[profiles.p]\n' + FHIR + 'vendor = "epic"\n'
                       '[profiles.p.oauth]\nclient_id = "medimg-backend"\n'
                       'private_key_file = "/etc/medimg/epic.pem"\n')
    assert shown["auth"] == "oauth"
    assert shown["oauth"]["flow"] == "backend-services"
    assert shown["oauth"]["alg"] == "RS384"
    assert shown["oauth"]["client_id"] == "medimg-backend"


def test_a_key_the_profile_sets_wins_over_the_preset(tmp_path: Path) -> None:
    shown = _effective(tmp_path, '[profiles.p]\n' + FHIR + 'vendor = "epic"\nauth = "oauth"\n'
                       '[profiles.p.oauth]\nclient_id = "x"\nflow = "authorization-code"\n'
                       'alg = "ES384"\n')
    assert shown["oauth"]["flow"] == "authorization-code"
    assert shown["oauth"]["alg"] == "ES384"


def test_preset_defaults_never_make_a_profile_incomplete(tmp_path: Path) -> None:
    # Without an [oauth] table, auth = "oauth" would make the profile invalid: not applied.
    shown = _effective(tmp_path, '[profiles.p]\n' + FHIR + 'vendor = "epic"\n')
    assert "auth" not in shown and "oauth" not in shown
    assert apply_defaults("dimse", {"vendor": "epic", "host": "h"}) == {
        "vendor": "epic", "host": "h"}  # an EHR preset changes no DIMSE profile


def test_cerner_preset_sets_client_secret_basic(tmp_path: Path) -> None:
    shown = _effective(tmp_path, '[profiles.p]\n' + FHIR + 'vendor = "cerner"\nauth = "oauth"\n'
                       '[profiles.p.oauth]\nclient_id = "x"\nflow = "client-credentials"\n'
                       'client_secret_env = "CERNER_SECRET"\n')
    assert shown["oauth"]["client_auth"] == "client_secret_basic"


def test_ge_centricity_adds_no_undocumented_dicomweb_auth(tmp_path: Path) -> None:
    """No public document gives Centricity's DICOMweb auth style: nothing is guessed."""
    base = '[profiles.p]\ntype = "dicomweb"\nurl = "https://pacs.example.org/dicom-web"\n'
    with_vendor = _effective(tmp_path, base + 'vendor = "ge"\n')
    without = _effective(tmp_path, base)
    assert with_vendor.pop("vendor") == "ge-centricity"
    assert with_vendor == without


def test_probe_shows_the_vendor_quirks(tmp_path: Path, orthanc: Orthanc) -> None:
    config = write_config(tmp_path / "c.toml", orthanc.profile_toml("pacs", vendor="siemens"))
    result = medimg("echo", "pacs", "--probe", "--format", "json", config=config)
    assert result.code == 0, result.stderr
    (quirk,) = json.loads(result.stdout)["vendor_quirks"]
    assert quirk.startswith("siemens-syngo: ") and "Modality Worklist Provider AE" in quirk
    assert "source: Siemens Healthcare, DICOM Conformance Statement syngo.plaza" in quirk
    table = medimg("echo", "pacs", "--probe", "--format", "table", config=config)
    assert "documented vendor behaviour: siemens-syngo:" in table.stdout
