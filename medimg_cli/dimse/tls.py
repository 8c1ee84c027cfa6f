"""DICOM TLS: SSL contexts from a profile's keys, and what a failed handshake means.

`TlsSettings` holds only paths and flags (it travels to worker processes);
`client_context` and `server_context` build the `ssl.SSLContext` in the
process that uses it. A client context records, per connection, how long the
TCP connect and the TLS handshake took and the TLS error that ended the
connection (in the handshake, or in the first read when TLS 1.3 peers refuse
our certificate only after their handshake): `diagnose` turns that into a
ConnectError (exit 3) that names the problem and what to change.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_cli.errors import ConfigError, ConnectError

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("medimg.dimse")

TLS_VERSIONS = ("1.2", "1.3")

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) that mean "issuer not trusted".
_UNKNOWN_CA_CODES = frozenset({2, 18, 19, 20, 21})
_EXPIRED = 10
_NOT_YET_VALID = 9
_HOSTNAME_MISMATCH = 62
_IP_MISMATCH = 64


@dataclass(frozen=True)
class TlsSettings:
    """A profile's TLS keys: where the CA, our certificate and key are, and how to verify."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    min_version: str | None = None
    profile: str = "?"


@dataclass
class TlsRecord:
    """What happened on one client connection (written by the socket, read by diagnose)."""

    started: float = 0.0
    connect: float = 0.0
    handshake: float = 0.0
    handshake_started: bool = False
    handshake_done: bool = False
    error: BaseException | None = None
    peer_certificate: dict[str, Any] = field(default_factory=dict)


def _check_file(settings: TlsSettings, key: str, value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"profile '{settings.profile}': {key} {path} does not exist or is not a file",
            hint=f"check {key} in profile '{settings.profile}'",
        )
    return str(path)


def _load_own_certificate(context: ssl.SSLContext, settings: TlsSettings) -> None:
    import ssl

    if not settings.cert_file:
        if settings.key_file:
            raise ConfigError(
                f"profile '{settings.profile}': key_file without cert_file",
                hint="set cert_file to the certificate that goes with the key",
            )
        return
    cert = _check_file(settings, "cert_file", settings.cert_file)
    key = _check_file(settings, "key_file", settings.key_file) if settings.key_file else None

    def no_password() -> str:
        raise ConfigError(
            f"profile '{settings.profile}': key_file {key or cert} is encrypted",
            hint="medimg needs an unencrypted private key file readable only by you "
            "(e.g. `openssl pkey -in KEY -out KEY.plain`, chmod 600)",
        )

    try:
        context.load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"profile '{settings.profile}': cannot use cert_file {cert} with key_file "
            f"{key or '(in cert_file)'}: {exc.reason or exc}",
            hint="the key must be the certificate's private key, both in PEM format",
        ) from None


def _min_version(context: ssl.SSLContext, settings: TlsSettings) -> None:
    import ssl

    version = settings.min_version or "1.2"
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    )


_SOCKET_CLASS: Any = None


def _socket_class() -> type[ssl.SSLSocket]:
    global _SOCKET_CLASS
    if _SOCKET_CLASS is None:
        _SOCKET_CLASS = _make_socket_class()
    return _SOCKET_CLASS  # type: ignore[no-any-return]


def _make_socket_class() -> type[ssl.SSLSocket]:
    import ssl

    class RecordingSocket(ssl.SSLSocket):
        """Times TCP connect and handshake; remembers the TLS error that ended it."""

        def _record(self) -> TlsRecord | None:
            record = getattr(self.context, "medimg_record", None)
            return record if isinstance(record, TlsRecord) else None

        def connect(self, address: Any) -> None:
            record = self._record()
            if record is not None:
                record.started = time.perf_counter()
            try:
                super().connect(address)
            except OSError as exc:
                if record is not None:
                    record.error = exc
                    if not record.handshake_started:
                        record.connect = time.perf_counter() - record.started
                raise
            if record is not None:
                record.handshake_done = True
                record.handshake = time.perf_counter() - record.started - record.connect
                with contextlib.suppress(ValueError, OSError):
                    record.peer_certificate = dict(self.getpeercert() or {})

        def do_handshake(self, block: bool = False) -> None:
            record = self._record()
            if record is not None and not record.handshake_started:
                record.handshake_started = True
                record.connect = time.perf_counter() - record.started
            super().do_handshake(block)

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            try:
                return super().recv(buflen, flags)
            except ssl.SSLError as exc:
                self._failed(exc)
                raise

        def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
            try:
                return super().recv_into(buffer, nbytes or 0, flags)
            except ssl.SSLError as exc:
                self._failed(exc)
                raise

        def _failed(self, exc: BaseException) -> None:
            record = self._record()
            if record is not None and record.error is None:
                record.error = exc

    return RecordingSocket


_warned: set[str] = set()


def _warn_unverified(settings: TlsSettings) -> None:
    """Once per profile and process (a move opens several associations)."""
    if settings.profile in _warned:
        return
    _warned.add(settings.profile)
    log.warning(
        "profile '%s': tls_verify = false: the PACS's certificate is not checked "
        "(anyone on the network path can read and change the exchange)",
        settings.profile,
    )


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """A fresh client context (one per association: it carries that connection's record)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _min_version(context, settings)
    if settings.verify:
        if settings.ca_file:
            ca = _check_file(settings, "ca_file", settings.ca_file)
            try:
                context.load_verify_locations(cafile=ca)
            except ssl.SSLError as exc:
                raise ConfigError(
                    f"profile '{settings.profile}': ca_file {ca} holds no usable "
                    f"certificate: {exc.reason or exc}",
                    hint="ca_file must be a PEM file with the CA certificate(s)",
                ) from None
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _warn_unverified(settings)
    _load_own_certificate(context, settings)
    context.sslsocket_class = _socket_class()
    context.medimg_record = TlsRecord()  # type: ignore[attr-defined]
    return context


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The embedded storage SCP's context: our certificate; the CA to check peers with
    (peers must then present a certificate signed by it) when ca_file is set."""
    import ssl

    if not settings.cert_file:
        raise ConfigError(
            f"profile '{settings.profile}': receive_tls needs cert_file and key_file",
            hint="set cert_file and key_file (the certificate the PACS will see when it "
            "sends to medimg)",
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _min_version(context, settings)
    _load_own_certificate(context, settings)
    if settings.ca_file and settings.verify:
        ca = _check_file(settings, "ca_file", settings.ca_file)
        context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def record_of(context: Any) -> TlsRecord | None:
    record = getattr(context, "medimg_record", None)
    return record if isinstance(record, TlsRecord) else None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or "").upper()


def diagnose(
    exc: BaseException,
    record: TlsRecord,
    settings: TlsSettings,
    host: str,
    port: int,
) -> ConnectError | None:
    """The ConnectError for a TLS failure, or None when `exc` is not about TLS."""
    import ssl

    where = f"{host}:{port}"
    p = settings.profile
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = int(exc.verify_code or 0)
        message = str(exc.verify_message or exc)
        if code == _EXPIRED:
            return ConnectError(
                f"TLS: the certificate of {where} has expired ({message})",
                hint="the PACS administrator must renew it; check also this machine's clock",
            )
        if code == _NOT_YET_VALID:
            return ConnectError(
                f"TLS: the certificate of {where} is not valid yet ({message})",
                hint="check the clocks of this machine and of the PACS",
            )
        if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
            return ConnectError(
                f"TLS: the certificate of {where} does not name host '{host}' "
                f"(hostname mismatch: {message})",
                hint=f"set host in profile '{p}' to a name the certificate was issued for, "
                "or have the PACS's certificate reissued with this name",
            )
        if code in _UNKNOWN_CA_CODES:
            ca = f"ca_file ({settings.ca_file})" if settings.ca_file else "the system's CAs"
            return ConnectError(
                f"TLS: the certificate of {where} is signed by an unknown CA: {ca} "
                f"does not contain its issuer ({message})",
                hint=f"set ca_file in profile '{p}' to the CA certificate that signed the "
                "PACS's certificate (ask its administrator)",
            )
        return ConnectError(
            f"TLS: the certificate of {where} was not accepted ({message})",
            hint=f"check ca_file in profile '{p}' and the PACS's certificate",
        )
    reason = _reason(exc)
    if (
        isinstance(exc, ssl.SSLError)
        and not settings.cert_file
        and any(word in reason for word in ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE",
                                            "PEER_DID_NOT_RETURN_A_CERTIFICATE"))
    ):
        return ConnectError(
            f"TLS: {where} requires a client certificate and we sent none",
            hint=f"set cert_file and key_file in profile '{p}' to a certificate the "
            "PACS trusts",
        )
    if isinstance(exc, ssl.SSLError) and any(
        word in reason
        for word in ("ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_UNKNOWN",
                     "ALERT_CERTIFICATE_EXPIRED", "ALERT_CERTIFICATE_REVOKED",
                     "ALERT_ACCESS_DENIED", "ALERT_DECRYPT_ERROR")
    ):
        return ConnectError(
            f"TLS: {where} refused our client certificate ({exc.reason})",
            hint=f"the PACS must trust the CA that signed cert_file of profile '{p}' "
            f"({settings.cert_file}), and the certificate must be valid",
        )
    if isinstance(exc, ssl.SSLError) and any(
        word in reason
        for word in ("UNSUPPORTED_PROTOCOL", "PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE",
                     "VERSION_TOO_LOW", "NO_SHARED_CIPHER", "HANDSHAKE_FAILURE")
    ):
        return ConnectError(
            f"TLS: {where} and medimg share no TLS version or cipher ({exc.reason})",
            hint=f"tls_min_version in profile '{p}' is "
            f"{settings.min_version or '1.2'}; the PACS may only offer older TLS",
        )
    if not record.handshake_done and (
        isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError,
                         BrokenPipeError))
        or (isinstance(exc, ssl.SSLError) and any(
            word in reason for word in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE",
                                        "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_EOF",
                                        "HTTP_REQUEST", "RECORD_TOO_LARGE")))
    ):
        return ConnectError(
            f"TLS: {where} does not answer in TLS: the port seems to speak plain DICOM",
            hint=f"set tls = false in profile '{p}', or use the PACS's TLS port "
            "(often 2762)",
        )
    if isinstance(exc, TimeoutError) and record.handshake_started and not record.handshake_done:
        return ConnectError(
            f"TLS: no answer to the TLS handshake from {where}",
            hint="the port may speak plain DICOM (set tls = false) or a firewall "
            "holds the packets",
        )
    if isinstance(exc, ssl.SSLError):
        return ConnectError(
            f"TLS with {where} failed: {exc.reason or exc}",
            hint=f"check the TLS keys of profile '{p}' and the PACS's TLS settings; "
            "-vv shows the exchange",
        )
    return None


# The first bytes a TLS server sends back to a plain A-ASSOCIATE-RQ: a TLS record
# (alert 0x15 or handshake 0x16, version 3.x).
def looks_like_tls(data: bytes) -> bool:
    return len(data) >= 3 and data[0] in (0x15, 0x16) and data[1] == 0x03


def plain_to_tls_error(host: str, port: int, profile: str, *, closed: bool) -> ConnectError:
    """A plain A-ASSOCIATE-RQ answered by a TLS record, or by a reset connection."""
    if closed:
        return ConnectError(
            f"{host}:{port} reset the connection without answering the A-ASSOCIATE-RQ: "
            "the port may expect DICOM TLS",
            hint=f"if it does, set tls = true in profile '{profile}' (and ca_file, cert_file, "
            "key_file); a PACS that accepts only known IP addresses also does this: "
            "check its log",
        )
    return ConnectError(
        f"{host}:{port} answered in TLS: the port expects DICOM TLS",
        hint=f"set tls = true in profile '{profile}' (with ca_file, and cert_file and "
        "key_file if the PACS wants a client certificate)",
    )
