"""The loopback redirect listener of the authorization-code flow (RFC 8252 7.3).

Listens on 127.0.0.1 (a free port unless the profile fixes one), accepts one
redirect to `/callback`, checks `state`, and answers with a page that sends
the user back to the terminal.
"""

from __future__ import annotations

import html
import http.server
import time
import urllib.parse
from types import TracebackType
from typing import Any

from medimg_cli.errors import ConnectError, RefusedError

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>medimg</title></head>
<body style="font-family:sans-serif;margin:3em"><h1>{title}</h1><p>{text}</p></body></html>"""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path != "/callback":
            self.send_error(404)
            return
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        if query.get("state") != self.server.expected_state:
            title, text, status = ("Login failed", "The answer did not match this login "
                                   "(state mismatch). Return to the terminal.", 400)
            self.server.result = {"_error": "state"}
        elif "error" in query:
            title, text, status = ("Login failed", "The authorization server refused: "
                                   + html.escape(query.get("error", "")) +
                                   ". Return to the terminal.", 200)
            self.server.result = query
        elif "code" in query:
            title, text, status = ("Logged in", "medimg has the authorization. You can close "
                                   "this tab and return to the terminal.", 200)
            self.server.result = query
        else:
            self.send_error(400)
            return
        body = PAGE.format(title=title, text=text).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request line holds the authorization code


class _Server(http.server.HTTPServer):
    expected_state: str = ""
    result: dict[str, str] | None = None


class LoopbackRedirect:
    """`with LoopbackRedirect(port) as listener: ... listener.wait(timeout, state=...)`."""

    def __init__(self, port: int = 0) -> None:
        try:
            self._server = _Server(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise ConnectError(f"cannot listen on 127.0.0.1:{port} for the login redirect: "
                               f"{exc.strerror or exc}",
                               hint="free the port, or set oauth.redirect_port = 0") from None
        self.port = int(self._server.server_address[1])
        self.redirect_uri = f"http://127.0.0.1:{self.port}/callback"

    def __enter__(self) -> LoopbackRedirect:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.server_close()

    def wait(self, timeout: float, *, state: str) -> dict[str, str]:
        """The redirect's query once it arrives; RefusedError on timeout or a bad answer."""
        self._server.expected_state = state
        self._server.timeout = 0.5
        deadline = time.monotonic() + timeout
        while self._server.result is None:
            if time.monotonic() > deadline:
                raise RefusedError(f"no login within {timeout:.0f} s",
                                   hint="run `medimg login` again (--timeout gives more time)")
            self._server.handle_request()
        result = self._server.result
        if result.get("_error") == "state":
            raise RefusedError("the login redirect did not carry this login's state",
                               hint="run `medimg login` again and use the new URL")
        if "error" in result:
            description = result.get("error_description", "")[:200]
            raise RefusedError("the authorization server refused the login ("
                               + result["error"] + (f": {description})" if description else ")"),
                               hint="check oauth.client_id and the scopes, then log in again")
        return result
