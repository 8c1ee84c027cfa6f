"""QIDO-RS: the same Query as C-FIND, answered over HTTP.

The query maps to QIDO parameters (PS3.18 10.6): matching keys by keyword,
list matching with commas, `includefield` for the keys asked back, `limit`.
The answer is already the DICOM JSON model; it is normalised the same way as
C-FIND's, so both print alike for the same data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from medimg_cli.dicomweb.client import request
from medimg_cli.errors import RemoteError
from medimg_cli.query import Query, normalise_record

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("medimg.http")

_RESOURCE = {"study": "studies", "series": "series", "instance": "instances"}
PAGE = 1000  # page size when the server says it capped an answer


def qido_path(query: Query) -> str:
    """The resource to query: narrowed by the upper unique keys when they are single values."""
    if query.level == "patient":
        raise RemoteError("QIDO-RS has no patient level",
                          hint="use --level study with --patient-id or --name")
    study = query.fixed_value("study") if query.level != "study" else None
    series = query.fixed_value("series") if query.level == "instance" else None
    if study and series:
        return f"studies/{study}/series/{series}/instances"
    if study:
        return f"studies/{study}/{_RESOURCE[query.level]}"
    return _RESOURCE[query.level]


def qido_params(query: Query, path: str) -> list[tuple[str, str]]:
    """Matching keys and includefields for the query."""
    in_path = {kw for kw in ("StudyInstanceUID", "SeriesInstanceUID")
               if kw in query.filters and f"/{query.filters[kw][1]}/" in f"/{path}/"}
    params: list[tuple[str, str]] = []
    for keyword, (_, value) in query.filters.items():
        if keyword in in_path:
            continue
        params.append((keyword, value.replace("\\", ",")))
    for key in query.return_keys():
        if key.keyword not in query.filters:
            params.append(("includefield", key.keyword))
    if query.fuzzy:
        params.append(("fuzzymatching", "true"))
    return params


def query_string(params: list[tuple[str, str]]) -> str:
    """Percent-encoded, but with wildcards, ranges and lists left as they are.

    Some servers (Orthanc 1.10 among them) do not decode `%2A` back to `*`.
    """
    from urllib.parse import quote

    return "&".join(f"{quote(k, safe='')}={quote(v, safe='*?,-^.:')}" for k, v in params)


def qido_find(client: httpx.Client, query: Query) -> Iterator[dict[str, Any]]:
    """Yield each match as a normalised DICOM JSON record."""
    path = qido_path(query)
    params = qido_params(query, path)
    tags = query.output_tags()
    remaining = query.limit
    offset = 0
    while True:
        page_params = list(params)
        if remaining is not None:
            page_params.append(("limit", str(remaining)))
        if offset:
            page_params.append(("offset", str(offset)))
        response = request(client, "GET", f"{path}?{query_string(page_params)}",
                           what="QIDO-RS query", headers={"Accept": "application/dicom+json"})
        if response.status_code == 204 or not response.content:
            return
        try:
            matches = response.json()
        except ValueError:
            raise RemoteError("QIDO-RS answer is not JSON",
                              hint="is the profile's url the DICOMweb root?") from None
        if not isinstance(matches, list):
            raise RemoteError("QIDO-RS answer is not a JSON array of matches")
        for match in matches:
            if isinstance(match, dict):
                yield normalise_record(match, tags)
        offset += len(matches)
        if remaining is not None:
            remaining -= len(matches)
            if remaining <= 0:
                return
        # A server that capped its answer says so in a Warning header (PS3.18 8.3.5).
        warning = response.headers.get("Warning", "")
        if not matches or "299" not in warning:
            return
        log.debug("QIDO-RS answer capped (%s); asking from offset %d", warning, offset)


def dicomweb_echo(client: httpx.Client) -> tuple[int, float]:
    """Reach `studies?limit=1`: (HTTP status, seconds)."""
    import time

    started = time.perf_counter()
    response = request(client, "GET", "studies", what="DICOMweb echo",
                       params={"limit": "1"}, headers={"Accept": "application/dicom+json"})
    return response.status_code, time.perf_counter() - started
