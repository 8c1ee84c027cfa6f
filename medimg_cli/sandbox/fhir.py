"""FHIR R4 for the sandbox (to be completed)."""

from __future__ import annotations

import json
from typing import Any

from medimg_cli.sandbox.store import Archive


def handle(archive: Archive, method: str, path: str, query: str, body: bytes, base: str,
           headers: Any) -> tuple[int, bytes, str, dict[str, str]]:
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "not-found", "diagnostics": path}]}
    return 404, json.dumps(outcome).encode(), "application/fhir+json", {}
