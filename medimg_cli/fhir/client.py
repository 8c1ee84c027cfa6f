"""FHIR R4 over the shared HTTP layer: read, search (following Bundle `next` links), create.

Every failure becomes a medimg error at this edge: an OperationOutcome in an
error answer is shown as its issues' severity, code and diagnostics (exit 5),
401/403 are refusals (exit 4). Searches ask for `Prefer: handling=strict`, so
a misspelt search parameter is an error rather than a silently wider search;
warnings a lenient server puts in the Bundle reach the caller's `on_outcome`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urljoin, urlsplit

from medimg_cli.dicomweb.client import request
from medimg_cli.errors import RefusedError, RemoteError, UsageError

if TYPE_CHECKING:
    import httpx

FHIR_JSON = "application/fhir+json"
ACCEPT = {"Accept": f"{FHIR_JSON}, application/json;q=0.9"}
MAX_PAGE = 100  # _count asked for when only --limit is given
_ERRORS = tuple(range(400, 600))
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

Params = Sequence[tuple[str, str]]


class OperationOutcomeError(RemoteError):
    """The server answered with an OperationOutcome; `issues` are its issue elements."""

    def __init__(self, message: str, issues: list[dict[str, Any]], hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.issues = issues


def outcome_text(outcome: dict[str, Any]) -> str:
    """An OperationOutcome's issues on one line: `severity code: diagnostics; ...`."""
    parts = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = str(issue.get("diagnostics") or "")
        if not text:
            details = issue.get("details")
            if isinstance(details, dict):
                text = str(details.get("text") or "")
        where = issue.get("expression") or issue.get("location")
        if isinstance(where, list) and where:
            text += f" (at {', '.join(str(w) for w in where)})"
        head = f"{issue.get('severity', '?')} {issue.get('code', '?')}"
        parts.append(f"{head}: {text}" if text else head)
    return "; ".join(parts) or "OperationOutcome without issues"


def check_type(rtype: str) -> str:
    """A resource type as a path segment, or a usage error."""
    if not _TYPE.match(rtype):
        raise UsageError(f"'{rtype}' is not a FHIR resource type",
                         hint="resource types look like Patient, ImagingStudy, DiagnosticReport")
    return rtype


def check_id(rid: str) -> str:
    """A logical id as a path segment (FHIR: 1-64 of A-Z a-z 0-9 - .), or a usage error."""
    if not _ID.match(rid):
        raise UsageError(f"'{rid}' is not a FHIR id",
                         hint="ids are 1-64 letters, digits, '-' and '.'")
    return rid


def parse_reference(text: str) -> tuple[str, str]:
    """`TYPE/ID` as (type, id), checked."""
    rtype, sep, rid = text.strip().partition("/")
    if not sep:
        raise UsageError(f"'{text}' is not TYPE/ID", hint="e.g. Patient/123")
    return check_type(rtype), check_id(rid.split("/_history/")[0].strip("/"))


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _fail(response: httpx.Response, what: str) -> NoReturn:
    status = response.status_code
    body = _body(response)
    issues: list[dict[str, Any]] = []
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        issues = [i for i in body.get("issue") or [] if isinstance(i, dict)]
        detail = outcome_text(body)
    else:
        detail = response.reason_phrase
        text = response.text.strip()
        if text and len(text) < 300 and "\n" not in text:
            detail += f": {text}"
    message = f"{what}: HTTP {status} {detail}"
    if status == 401:
        raise RefusedError(message, hint="the server wants credentials: check the profile's auth "
                           "settings, or run `medimg login PROFILE`")
    if status == 403:
        raise RefusedError(message, hint="the credentials lack the permission (scope) for this; "
                           "ask for a token whose scope allows it")
    hint = "the server refused the request; rerun with -vv for the exchange"
    if status == 404 and issues:
        hint = "check the type and id"
    elif status == 400 and issues and not what.startswith("search"):
        hint = "check the resource against what the server requires"
    elif status == 400 and issues:
        hint = ("check the parameters and values; the server's CapabilityStatement "
                "([base]/metadata) lists the search parameters it supports")
    if issues:
        raise OperationOutcomeError(message, issues, hint=hint)
    raise RemoteError(message, hint=hint)


def call(client: httpx.Client, method: str, url: str, *, what: str, idempotent: bool = True,
         **kwargs: Any) -> httpx.Response:
    """One FHIR interaction; error answers raised as medimg errors."""
    headers = {**ACCEPT, **kwargs.pop("headers", {})}
    response = request(client, method, url, what=what, idempotent=idempotent, answered=_ERRORS,
                       headers=headers, **kwargs)
    if response.status_code >= 400:
        _fail(response, what)
    return response


def resource_of(response: httpx.Response, what: str) -> dict[str, Any]:
    """The FHIR resource in a response body, or a RemoteError saying what came instead."""
    body = _body(response)
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        kind = response.headers.get("content-type", "no content type")
        raise RemoteError(f"{what}: the answer is not a FHIR JSON resource ({kind})",
                          hint="check that url in the profile is the FHIR base URL")
    return body


def read(client: httpx.Client, rtype: str, rid: str) -> dict[str, Any]:
    """GET [base]/TYPE/ID."""
    what = f"read {rtype}/{rid}"
    response = call(client, "GET", f"{check_type(rtype)}/{check_id(rid)}", what=what)
    return resource_of(response, what)


@dataclass
class Page:
    """One searchset Bundle: its matches (cut to the limit), included resources, outcomes."""

    matches: list[dict[str, Any]] = field(default_factory=list)
    included: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    total: int | None = None


def _same_origin(a: str, b: str) -> bool:
    sa, sb = urlsplit(a), urlsplit(b)
    return (sa.scheme, sa.hostname, sa.port) == (sb.scheme, sb.hostname, sb.port)


def _next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def search_pages(
    client: httpx.Client,
    rtype: str,
    params: Params,
    *,
    limit: int | None = None,
    page_size: int | None = None,
    strict: bool = True,
    on_outcome: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[Page]:
    """GET [base]/TYPE?params, then each `next` link, until `limit` matches (None: all).

    `page_size` is sent as `_count` (unless params have one); with only a
    limit, `_count` is the smaller of the limit and 100.
    """
    params = list(params)
    if not any(k == "_count" for k, _ in params):
        count = page_size or (min(limit, MAX_PAGE) if limit else None)
        if count:
            params.append(("_count", str(count)))
    headers = {"Prefer": "handling=strict"} if strict else {}
    what = f"search {check_type(rtype)}"
    url: str | None = rtype
    kwargs: dict[str, Any] = {"params": params}
    seen: set[str] = set()
    remaining = limit
    base = str(client.base_url)
    while url is not None:
        response = call(client, "GET", url, what=what, headers=headers, **kwargs)
        bundle = resource_of(response, what)
        if bundle.get("resourceType") != "Bundle":
            raise RemoteError(f"{what}: the answer is a {bundle.get('resourceType')}, not a Bundle")
        page = Page(total=bundle.get("total") if isinstance(bundle.get("total"), int) else None)
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            mode = (entry.get("search") or {}).get("mode", "match")
            if resource.get("resourceType") == "OperationOutcome" and mode != "match":
                page.outcomes.append(resource)
                if on_outcome is not None:
                    on_outcome(resource)
            elif mode == "include":
                page.included.append(resource)
            elif remaining is None or len(page.matches) < remaining:
                page.matches.append(resource)
        if remaining is not None:
            remaining -= len(page.matches)
        yield page
        url = _next_link(bundle)
        if url is not None:
            url = urljoin(str(response.url), url)  # a relative link is relative to this page
        if url is None or (remaining is not None and remaining <= 0) or url in seen:
            break
        if not _same_origin(url, base):
            raise RemoteError(
                f"{what}: the server's next page is on another host ({urlsplit(url).netloc}); "
                "not sending the credentials there",
                hint="the server's base URL setting differs from url in the profile")
        seen.add(url)
        kwargs = {}  # the next link carries the query


def create(client: httpx.Client, resource: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """POST [base]/TYPE; the new id (from Location, else the body) and the stored resource."""
    rtype = check_type(str(resource.get("resourceType", "")))
    what = f"create {rtype}"
    response = call(
        client, "POST", rtype, what=what, idempotent=False,
        headers={"Content-Type": f"{FHIR_JSON}; charset=utf-8",
                 "Prefer": "return=representation"},
        content=json.dumps(resource, ensure_ascii=False).encode("utf-8"),
    )
    body = _body(response)
    stored = body if isinstance(body, dict) and body.get("resourceType") == rtype else None
    location = response.headers.get("Location") or response.headers.get("Content-Location") or ""
    found = re.search(rf"(?:^|/){rtype}/([A-Za-z0-9\-.]{{1,64}})(?:/_history/[^/]*)?/?$",
                      urlsplit(location).path or location)
    if found:
        return found.group(1), stored
    if stored is not None and isinstance(stored.get("id"), str):
        return stored["id"], stored
    raise RemoteError(f"{what}: HTTP {response.status_code}, but the server named no new id "
                      "(no Location header, no resource in the body)")


@dataclass
class ServerInfo:
    """What `echo` reports about a FHIR server."""

    status: int
    seconds: float
    capability: dict[str, Any]
    smart: dict[str, Any] | None


def server_info(client: httpx.Client, *, discover: bool = True) -> ServerInfo:
    """GET [base]/metadata, timed; then (`discover`) [base]/.well-known/smart-configuration."""
    started = time.perf_counter()
    response = call(client, "GET", "metadata", what="metadata")
    seconds = time.perf_counter() - started
    capability = resource_of(response, "metadata")
    if capability.get("resourceType") != "CapabilityStatement":
        raise RemoteError(f"metadata: the answer is a {capability.get('resourceType')}, "
                          "not a CapabilityStatement",
                          hint="check that url in the profile is the FHIR base URL")
    smart = None
    if not discover:
        return ServerInfo(response.status_code, seconds, capability, smart)
    answer = request(client, "GET", ".well-known/smart-configuration", what="SMART discovery",
                     answered=_ERRORS, headers={"Accept": "application/json"})
    body = _body(answer) if answer.status_code == 200 else None
    if isinstance(body, dict):
        smart = body
    return ServerInfo(response.status_code, seconds, capability, smart)
