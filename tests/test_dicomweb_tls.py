"""DICOMweb over HTTPS: verified by default, ca_file, verify = false."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import medimg, write_config
from peers import require_binary


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl): (ca.pem, server.pem)."""
    require_binary("openssl")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=medimg test CA", "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (directory / "ext.cnf").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt")
    bundle = directory / "server.pem"  # Orthanc wants certificate and key in one file
    bundle.write_text((directory / "server.crt").read_text()
                      + (directory / "server.key").read_text())
    return directory / "ca.pem", bundle


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS QIDO-RS stand-in on loopback, with a certificate from our own CA.

    (Debian's Orthanc 1.10 crashes on its first HTTPS request here, so the
    server is Python's own http.server behind TLS; what is tested is medimg's
    side of the handshake.)
    """
    import ssl

    certs = tmp_path_factory.mktemp("certs")
    ca, bundle = make_ca_and_server_cert(certs)
    body = json.dumps([{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}]).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(bundle)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}/dicom-web", ca
    httpd.shutdown()
    httpd.server_close()


def profile(url: str, extra: str = "") -> str:
    return f'[profiles.web]\ntype = "dicomweb"\nurl = "{url}"\n{extra}'


def test_https_with_the_right_ca(tmp_path: Path, tls_server: tuple[str, Path]) -> None:
    url, ca = tls_server
    config = write_config(tmp_path / "c.toml", profile(url, f'ca_file = "{ca}"\n'))
    result = medimg("find", "web", "--format", "uids", config=config)
    assert result.code == 0, result.stderr
    assert result.stdout == "1.2.3\n"


def test_unknown_ca_is_refused_with_exit_3(tmp_path: Path,
                                          tls_server: tuple[str, Path]) -> None:
    url, _ = tls_server
    result = medimg("echo", "web", config=write_config(tmp_path / "c.toml", profile(url)))
    assert result.code == 3, result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    insecure = write_config(tmp_path / "i.toml", profile(url, "verify = false\n"))
    result = medimg("echo", "web", config=insecure)
    assert result.code == 0, result.stderr
    assert "verification is OFF" in result.stderr
