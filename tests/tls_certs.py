"""Throw-away certificates for the DICOM TLS tests, made with the `openssl` command.

`make_certs(directory)` writes a CA and, signed by it, a server certificate for
127.0.0.1/localhost, a client certificate, an expired server certificate and a
server certificate for another host name; plus a second, unrelated CA with a
server certificate of its own (the "wrong CA" case). Each certificate has its
key next to it (`NAME.crt`, `NAME.key`, PEM, unencrypted).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from peers import require_binary


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    @property
    def bundle(self) -> Path:
        """Certificate and key in one file (Orthanc's DicomTlsCertificate wants them apart,
        but some tools take one file)."""
        path = self.cert.with_suffix(".pem")
        if not path.exists():
            path.write_text(self.cert.read_text() + self.key.read_text())
        return path


@dataclass(frozen=True)
class CertSet:
    ca: Path  # the CA certificate that signed server, client, expired and other_host
    server: Cert  # CN/SAN 127.0.0.1 and localhost
    client: Cert  # a client certificate (CN medimg-client)
    expired: Cert  # a server certificate for 127.0.0.1 that expired yesterday
    other_host: Cert  # a server certificate for pacs.invalid only (hostname mismatch)
    wrong_ca: Path  # another CA: it signed nothing of the above
    wrong_ca_server: Cert  # a server certificate for 127.0.0.1 signed by wrong_ca


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True,
                   timeout=60)


def _ca(directory: Path, name: str) -> Path:
    (directory / f"{name}.cnf").write_text(
        "[req]\ndistinguished_name = dn\n[dn]\n[v3_ca]\n"
        "basicConstraints = critical, CA:true\nkeyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
             "-subj", f"/CN=medimg test {name}", "-config", f"{name}.cnf",
             "-extensions", "v3_ca", "-keyout", f"{name}.key", "-out", f"{name}.crt")
    return directory / f"{name}.crt"


def _leaf(directory: Path, name: str, ca: str, cn: str, san: str, *, client: bool = False,
          expired: bool = False) -> Cert:
    _openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr")
    usage = "clientAuth" if client else "serverAuth, clientAuth"
    ext = f"basicConstraints = CA:false\nextendedKeyUsage = {usage}\n"
    if san:
        ext += f"subjectAltName = {san}\n"
    (directory / f"{name}.ext").write_text(ext)
    if expired:
        # `openssl ca` can backdate; `x509 -req` cannot: a minimal CA database for it.
        db = directory / f"{name}-db"
        db.mkdir(exist_ok=True)
        (db / "index.txt").write_text("")
        (db / "serial").write_text("1000\n")
        (directory / f"{name}-ca.cnf").write_text(
            "[ca]\ndefault_ca = test\n[test]\n"
            f"database = {db}/index.txt\nserial = {db}/serial\nnew_certs_dir = {db}\n"
            "default_md = sha256\npolicy = any\nunique_subject = no\n"
            "[any]\ncommonName = supplied\n"
        )
        _openssl(directory, "ca", "-batch", "-config", f"{name}-ca.cnf",
                 "-cert", f"{ca}.crt", "-keyfile", f"{ca}.key", "-in", f"{name}.csr",
                 "-out", f"{name}.crt", "-extfile", f"{name}.ext", "-notext",
                 "-startdate", "20200101000000Z", "-enddate", "20200102000000Z")
    else:
        _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt",
                 "-CAkey", f"{ca}.key", "-CAcreateserial", "-days", "3",
                 "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    return Cert(directory / f"{name}.crt", directory / f"{name}.key")


def make_certs(directory: Path) -> CertSet:
    """Write the whole set into `directory` (about 2 s of RSA key generation)."""
    require_binary("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca")
    wrong_ca = _ca(directory, "wrongca")
    loopback = "IP:127.0.0.1, DNS:localhost"
    return CertSet(
        ca=ca,
        server=_leaf(directory, "server", "ca", "127.0.0.1", loopback),
        client=_leaf(directory, "client", "ca", "medimg-client", "", client=True),
        expired=_leaf(directory, "expired", "ca", "127.0.0.1", loopback, expired=True),
        other_host=_leaf(directory, "otherhost", "ca", "pacs.invalid", "DNS:pacs.invalid"),
        wrong_ca=wrong_ca,
        wrong_ca_server=_leaf(directory, "wrongserver", "wrongca", "127.0.0.1", loopback),
    )
