"""The HTTP layer when the server misbehaves (fault injection with a loopback server).

Retries with Retry-After on 429/503, failures mapped to exit codes, garbage
answers, capped answers paged, secrets kept out of -vv logs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import medimg, write_config

MATCH = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]},
         "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}}

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Script:
    """The answers to give, in order (the last one repeats), and what was asked."""

    answers: list[Callable[[str], Answer]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.requests.append((self.path, dict(self.headers)))
            index = min(len(script.requests), len(script.answers)) - 1
            status, headers, body = script.answers[index](self.path)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web", script
    httpd.shutdown()
    httpd.server_close()


def json_answer(matches: list[dict[str, Any]], headers: dict[str, str] | None = None
                ) -> Callable[[str], Answer]:
    body = json.dumps(matches).encode()
    return lambda path: (200, {"Content-Type": "application/dicom+json", **(headers or {})}, body)


def status_answer(status: int, headers: dict[str, str] | None = None,
                  body: bytes = b"") -> Callable[[str], Answer]:
    return lambda path: (status, headers or {}, body)


def config_for(tmp_path: Path, url: str, extra: str = "") -> Path:
    return write_config(tmp_path / "c.toml",
                        f'[profiles.web]\ntype = "dicomweb"\nurl = "{url}"\n{extra}')


@pytest.mark.parametrize("status", [429, 503])
def test_busy_server_is_retried_after_its_retry_after(
    tmp_path: Path, server: tuple[str, Script], status: int
) -> None:
    url, script = server
    script.answers = [status_answer(status, {"Retry-After": "1"}), json_answer([MATCH])]
    import time

    started = time.monotonic()
    result = medimg("find", "web", config=config_for(tmp_path, url))
    assert result.code == 0, result.stderr
    assert len(result.jsonl()) == 1
    assert len(script.requests) == 2
    assert time.monotonic() - started >= 1.0  # waited as told


def test_retries_are_bounded(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [status_answer(503, {"Retry-After": "0"})]
    result = medimg("find", "web", config=config_for(tmp_path, url))
    assert result.code == 5
    assert "HTTP 503" in result.stderr
    assert len(script.requests) == 4  # the first try and 3 retries


@pytest.mark.parametrize(
    ("status", "code"), [(401, 4), (403, 4), (404, 5), (500, 5)]
)
def test_http_failures_map_to_exit_codes(
    tmp_path: Path, server: tuple[str, Script], status: int, code: int
) -> None:
    url, script = server
    script.answers = [status_answer(status, body=b"no such thing")]
    result = medimg("find", "web", config=config_for(tmp_path, url))
    assert result.code == code, result.stderr
    assert f"HTTP {status}" in result.stderr and "no such thing" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert len(script.requests) == 1  # not retried


def test_garbage_answer_is_a_remote_failure(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [lambda path: (200, {"Content-Type": "application/json"}, b"<html>oops")]
    result = medimg("find", "web", config=config_for(tmp_path, url))
    assert result.code == 5
    assert "QIDO-RS answer is not JSON" in result.stderr


def test_capped_answer_is_paged(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    page1 = [dict(MATCH, **{"0020000D": {"vr": "UI", "Value": [f"1.2.{n}"]}}) for n in range(3)]
    page2 = [dict(MATCH, **{"0020000D": {"vr": "UI", "Value": ["1.2.9"]}})]
    script.answers = [json_answer(page1, {"Warning": '299 server: "The number of results '
                                          'exceeded the maximum"'}), json_answer(page2)]
    result = medimg("find", "web", "--format", "uids", config=config_for(tmp_path, url))
    assert result.code == 0, result.stderr
    assert result.stdout.split() == ["1.2.0", "1.2.1", "1.2.2", "1.2.9"]
    assert "offset=3" in script.requests[1][0]


@pytest.mark.parametrize(
    ("auth", "env", "header"),
    [
        ('auth = "bearer"\ntoken_env = "T"\n', {"T": "tok-SECRET-123"}, "authorization"),
        ('auth = "api-key"\napi_key_env = "K"\n', {"K": "key-SECRET-456"}, "x-api-key"),
    ],
)
def test_credentials_are_sent_but_never_logged(
    tmp_path: Path, server: tuple[str, Script], auth: str, env: dict[str, str], header: str
) -> None:
    url, script = server
    script.answers = [json_answer([MATCH])]
    result = medimg("-vv", "find", "web", config=config_for(tmp_path, url, auth), env=env)
    assert result.code == 0, result.stderr
    secret = next(iter(env.values()))
    sent = {k.lower(): v for k, v in script.requests[0][1].items()}
    assert secret in sent[header]
    assert secret not in result.stderr + result.stdout
    assert "<redacted>" in result.stderr


def test_tls_verification_off_is_warned_about(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [json_answer([MATCH])]
    result = medimg("find", "web", config=config_for(tmp_path, url, "verify = false\n"))
    assert result.code == 0, result.stderr
    assert "medimg: warning: TLS certificate verification is OFF for profile 'web'" in (
        result.stderr)
    quiet = medimg("-q", "find", "web", config=config_for(tmp_path, url, "verify = false\n"))
    assert quiet.stderr == ""


def test_fuzzy_matching_is_asked_for(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [json_answer([MATCH])]
    result = medimg("find", "web", "--name", "dou*", "--fuzzy", config=config_for(tmp_path, url))
    assert result.code == 0, result.stderr
    assert "fuzzymatching=true" in script.requests[0][0]
    assert "PatientName=dou*" in script.requests[0][0]
