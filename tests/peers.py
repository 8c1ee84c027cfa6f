"""Real DICOM peers for the test suite: Orthanc (+ DICOMweb plugin) and DCMTK's dcmqrscp.

Each peer runs as a child process on free loopback ports, in its own work
directory, with ``TCP_NODELAY=1`` in its environment (Debian's DCMTK and
Orthanc only disable Nagle when that variable is set; see DESIGN.md).

Both classes share one small interface (:class:`Peer`): ``name``, ``host``,
``port``, ``aet``, ``http_url``, ``log_path``, ``load(paths)``, ``stop()`` and
``profile_toml(name, **overrides)``.

Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, NoReturn

import pytest

__all__ = [
    "LOOPBACK",
    "Dcmqrscp",
    "Orthanc",
    "Peer",
    "PeerPool",
    "PeerStartError",
    "Storescp",
    "dcmtk_env",
    "free_port",
    "in_ci",
    "require_binary",
    "require_file",
    "run_dcmtk",
    "stop_all",
    "toml_value",
]

LOOPBACK = "127.0.0.1"

ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

# Which Debian package brings which program (for the "install X" message).
DEBIAN_PACKAGES: dict[str, str] = {
    "Orthanc": "orthanc",
    str(ORTHANC_DICOMWEB_PLUGIN): "orthanc-dicomweb",
    "dcmqrscp": "dcmtk",
    "storescu": "dcmtk",
    "storescp": "dcmtk",
    "findscu": "dcmtk",
    "echoscu": "dcmtk",
    "movescu": "dcmtk",
    "getscu": "dcmtk",
    "dcmdump": "dcmtk",
    "img2dcm": "dcmtk",
    "dcmdjpeg": "dcmtk",
}

# Orthanc lives in /usr/sbin, which is not on every user's PATH.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")

# A move destination / known modality: name -> (AE title, host, port).
Modalities = Mapping[str, tuple[str, str, int]]


# --------------------------------------------------------------------------
# Small helpers


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing(what: str, package: str) -> NoReturn:
    message = (
        f"{what} not found: install the Debian package '{package}' "
        f"(apt-get install {package})"
    )
    if in_ci():
        pytest.fail(f"{message}; under CI=true a missing peer is a failure", pytrace=False)
    pytest.skip(message)


def require_binary(name: str) -> str:
    """Absolute path of program ``name``; skip the test if missing (fail under CI=true)."""
    found = shutil.which(name)
    if found is None:
        search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_BIN_DIRS])
        found = shutil.which(name, path=search)
    if found is None:
        _missing(f"program '{name}'", DEBIAN_PACKAGES.get(name, name.lower()))
    return found


def require_file(path: Path | str, package: str | None = None) -> Path:
    """``path`` if it exists; skip the test if missing (fail under CI=true)."""
    p = Path(path)
    if not p.exists():
        _missing(f"file '{p}'", package or DEBIAN_PACKAGES.get(str(p), "?"))
    return p


def free_port() -> int:
    """A TCP port free on all interfaces right now (Orthanc binds 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open at once so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def dcmtk_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for DCMTK tools and Orthanc: ours plus ``TCP_NODELAY=1``."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    if extra:
        env.update(extra)
    return env


def run_dcmtk(
    args: Sequence[str], *, timeout: float = 30.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (``args[0]`` is resolved via :func:`require_binary`)."""
    argv = [require_binary(args[0]), *args[1:]]
    return subprocess.run(
        argv,
        env=dcmtk_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def toml_value(value: Any) -> str:
    """Render a scalar or list as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string (same escapes, \uXXXX).
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML: {value!r}")


def _profile_toml(name: str, base: dict[str, Any], overrides: Mapping[str, Any]) -> str:
    """``[profiles.NAME]`` with ``base`` updated by ``overrides`` (None removes a key)."""
    values = {**base, **overrides}
    key = name if name.replace("-", "").replace("_", "").isalnum() else json.dumps(name)
    lines = [f"[profiles.{key}]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Linux: have the kernel SIGTERM the peer if the test process dies (e.g. SIGKILL)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tcp_connects(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


READY_CHECK_AET = "MEDIMGTEST"


class PeerStartError(RuntimeError):
    """A peer did not come up; the message ends with the tail of its log."""

    def __init__(self, message: str, *, exited: bool) -> None:
        super().__init__(message)
        self.exited = exited


_live_peers: list[Peer] = []


@atexit.register
def _stop_all_peers() -> None:  # belt and braces; fixtures stop their peers
    for peer in list(_live_peers):
        with contextlib.suppress(Exception):
            peer.stop()


# --------------------------------------------------------------------------
# The common interface


class Peer:
    """A running peer. Construct with the subclasses' ``start()``."""

    name: ClassVar[str] = "peer"
    host: str = LOOPBACK
    # What the peer's A-ASSOCIATE-AC says it is built on (Orthanc and dcmqrscp: DCMTK).
    implementation_class_uid_prefix: ClassVar[str] = "1.2.276.0.7230010.3"

    def __init__(self, workdir: Path, port: int, aet: str, http_url: str | None = None) -> None:
        self.workdir = workdir
        self.port = port
        self.aet = aet
        self.http_url = http_url
        self.log_path = workdir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_seconds: float = 0.0  # how long start() waited for readiness
        self._log_file: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.aet}@{self.host}:{self.port} http={self.http_url}>"

    # -- process handling

    def _spawn(self, argv: Sequence[str]) -> None:
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            list(argv),
            cwd=self.workdir,
            env=dcmtk_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() also ends forked children
            preexec_fn=_set_pdeathsig,
        )
        _live_peers.append(self)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str, *, exited: bool) -> PeerStartError:
        return PeerStartError(
            f"{self.name}: {what}\nlog {self.log_path} (last lines):\n{self.log_tail()}",
            exited=exited,
        )

    def _wait_ready(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise self._fail(
                    f"exited with code {self.process.returncode} before {what}", exited=True
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise self._fail(f"no {what} within {timeout:.0f} s", exited=False)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _launch(self, argv: Sequence[str], timeout: float, what: str, may_retry: bool) -> bool:
        """Spawn and wait for `what`. False when it exited early and another try may follow
        (most likely a port taken between free_ports() and its bind); raises otherwise."""
        t0 = time.monotonic()
        self._spawn(argv)
        try:
            self._wait_ready(self._ready, timeout, what)
        except PeerStartError as exc:
            self.stop(graceful=False)
            if exc.exited and may_retry:
                return False
            raise
        self.started_seconds = time.monotonic() - t0
        return True

    def terminate(self) -> None:
        """Send SIGTERM to the peer's process group; do not wait (see :meth:`stop`)."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    def stop(self, *, graceful: bool = True, timeout: float = 10.0) -> None:
        """Stop the peer and its process group. Idempotent.

        ``graceful``: SIGTERM, wait up to ``timeout`` s, then SIGKILL (Orthanc 1.10
        takes ~3.5 s to shut down). Otherwise SIGKILL at once: fine for a peer
        whose work directory is thrown away.
        """
        proc = self.process
        if proc is not None and proc.poll() is None:
            if graceful:
                self.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc is not None:
            # forked children (dcmqrscp) may outlive the parent briefly
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self in _live_peers:
            _live_peers.remove(self)

    # -- interface

    def load(self, paths: Iterable[Path]) -> None:
        raise NotImplementedError

    def profile_toml(self, name: str, **overrides: Any) -> str:
        """A ``[profiles.NAME]`` TOML table for medimg's DIMSE profile to this peer.

        ``overrides`` add or replace keys (``calling_aet="X"``, ``timeout=5``); a
        value of None drops a key.
        """
        base: dict[str, Any] = {
            "type": "dimse",
            "host": self.host,
            "port": self.port,
            "called_aet": self.aet,
        }
        return _profile_toml(name, base, overrides)


def stop_all(peers: Iterable[Peer], *, graceful: bool = True) -> None:
    """Stop several peers at once (SIGTERM to all, then wait for each)."""
    peers = list(peers)
    if graceful:
        for peer in peers:
            peer.terminate()
    errors: list[BaseException] = []
    for peer in peers:
        try:
            peer.stop(graceful=graceful)
        except Exception as exc:  # stop the others anyway
            errors.append(exc)
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------
# Orthanc


class Orthanc(Peer):
    """Orthanc 1.10 with the DICOMweb plugin, everything allowed, no auth.

    ``http_url`` is ``http://127.0.0.1:PORT``; DICOMweb is at ``dicomweb_url``.
    """

    name: ClassVar[str] = "orthanc"

    def __init__(self, workdir: Path, port: int, aet: str, http_port: int) -> None:
        super().__init__(workdir, port, aet, f"http://{LOOPBACK}:{http_port}")
        self.http_port = http_port
        self.config: dict[str, Any] = {}
        # never use a proxy from the environment for loopback requests
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        # Basic credentials of the first RegisteredUsers entry, when auth is on.
        self.auth_headers: dict[str, str] = {}

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @staticmethod
    def make_config(
        workdir: Path,
        *,
        aet: str,
        dicom_port: int,
        http_port: int,
        check_called_aet: bool = False,
        dicomweb: bool = True,
        default_encoding: str = "Utf8",
        modalities: Modalities | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        storage = workdir / "db"
        config: dict[str, Any] = {
            "Name": f"medimg-test-{aet.lower()}",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": aet,
            "DicomPort": dicom_port,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": check_called_aet,
            # Orthanc 1.10 answers C-FIND in this encoding whatever the request's
            # SpecificCharacterSet; with its default "Latin1", 山田^太郎 comes back as "^".
            "DefaultEncoding": default_encoding,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {
                key: [m_aet, m_host, m_port]
                for key, (m_aet, m_host, m_port) in (modalities or {}).items()
            },
            "DicomModalitiesInDatabase": False,
            "DicomScpTimeout": 30,
            "DicomScuTimeout": 10,
            "StableAge": 1,
            "SaveJobs": False,
            "HttpThreadsCount": 10,
            "KeepAlive": True,
            "TcpNoDelay": True,  # HTTP side; the DICOM side reads $TCP_NODELAY
            "ExecuteLuaEnabled": False,
            "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)] if dicomweb else [],
            # no "Host": the plugin then builds WADO-RS URLs from the request's Host
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/", "EnableWado": True},
        }
        if extra:
            config.update(extra)
        return config

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        check_called_aet: bool = False,
        dicomweb: bool = True,
        default_encoding: str = "Utf8",
        modalities: Modalities | None = None,
        extra_config: Mapping[str, Any] | None = None,
        timeout: float = 20.0,
        attempts: int = 3,
    ) -> Orthanc:
        """Start Orthanc in ``workdir`` (created) and wait until DICOM and HTTP answer.

        ``check_called_aet``: set ``DicomCheckCalledAet`` (reject a wrong called AE).
        ``default_encoding``: ``DefaultEncoding``, the character set of every C-FIND
        answer (``"Utf8"`` -> ISO_IR 192; Orthanc's own default is ``"Latin1"``).
        ``modalities``: ``{"MEDIMG": ("MEDIMG", "127.0.0.1", 11113)}``, known peers
        and C-MOVE destinations. ``extra_config`` overrides any configuration key.
        """
        binary = require_binary("Orthanc")
        if dicomweb:
            require_file(ORTHANC_DICOMWEB_PLUGIN, "orthanc-dicomweb")
        for attempt in range(1, attempts + 1):
            dicom_port, http_port = free_ports(2)
            peer = cls(workdir, dicom_port, aet, http_port)
            workdir.mkdir(parents=True, exist_ok=True)
            peer.config = cls.make_config(
                workdir,
                aet=aet,
                dicom_port=dicom_port,
                http_port=http_port,
                check_called_aet=check_called_aet,
                dicomweb=dicomweb,
                default_encoding=default_encoding,
                modalities=modalities,
                extra=extra_config,
            )
            users = peer.config.get("RegisteredUsers") or {}
            if peer.config.get("AuthenticationEnabled") and users:
                import base64

                user, password = next(iter(users.items()))
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                peer.auth_headers = {"Authorization": f"Basic {token}"}
            config_path = workdir / "orthanc.json"
            config_path.write_text(json.dumps(peer.config, indent=2, ensure_ascii=False))
            if peer._launch([binary, str(config_path)], timeout, "answer on GET /system",
                            may_retry=attempt < attempts):
                return peer
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        if not _tcp_connects(self.port):
            return False
        try:
            req = urllib.request.Request(f"{self.http_url}/system", headers=self.auth_headers)
            with self._opener.open(req, timeout=1) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response's socket open until closed
            return False
        except (urllib.error.URLError, OSError):
            return False

    # -- REST

    def rest(
        self,
        method: str,
        path: str,
        body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
        *,
        content_type: str | None = None,
        timeout: float = 30,
    ) -> Any:
        """Call Orthanc's REST API; returns parsed JSON (or text if not JSON)."""
        data: bytes | None
        if isinstance(body, (Mapping, list)):
            data = json.dumps(body).encode()
            content_type = content_type or "application/json"
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        req = urllib.request.Request(
            f"{self.http_url}{path}", data=data, method=method, headers=self.auth_headers
        )
        if content_type:
            req.add_header("Content-Type", content_type)
        with self._opener.open(req, timeout=timeout) as resp:
            raw = resp.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        return self.rest("GET", path)

    def statistics(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.get("/statistics")
        return stats

    def load(self, paths: Iterable[Path]) -> None:
        """POST each file to ``/instances`` over one keep-alive connection."""
        conn = http.client.HTTPConnection(LOOPBACK, self.http_port, timeout=60)
        try:
            for path in paths:
                body = Path(path).read_bytes()
                conn.request(
                    "POST", "/instances", body=body,
                    headers={"Content-Type": "application/dicom", **self.auth_headers},
                )
                resp = conn.getresponse()
                raw = resp.read()
                status = ""
                with contextlib.suppress(ValueError, AttributeError):
                    status = json.loads(raw).get("Status", "")
                if resp.status != 200 or status not in ("Success", "AlreadyStored"):
                    raise RuntimeError(
                        f"orthanc: storing {path} answered HTTP {resp.status}: "
                        f"{raw[:500]!r}\n{self.log_tail(10)}"
                    )
        finally:
            conn.close()

    def clear(self) -> None:
        """Delete every patient (and so everything) from this Orthanc."""
        for patient in self.get("/patients"):
            self.rest("DELETE", f"/patients/{patient}")

    def dicomweb_profile_toml(self, name: str, **overrides: Any) -> str:
        base: dict[str, Any] = {"type": "dicomweb", "url": self.dicomweb_url, "auth": "none"}
        return _profile_toml(name, base, overrides)


# --------------------------------------------------------------------------
# dcmqrscp


class Dcmqrscp(Peer):
    """DCMTK's dcmqrscp with one read/write storage area AE (default ``DCMQR``).

    At most 500 studies per AE (compiled in); beyond that dcmqrscp silently
    deletes the oldest study. Unknown called AE titles are rejected.
    """

    name: ClassVar[str] = "dcmqrscp"
    MAX_STUDIES: ClassVar[int] = 500

    def __init__(self, workdir: Path, port: int, aet: str) -> None:
        super().__init__(workdir, port, aet, None)
        self.storage_dir = workdir / "db" / aet
        self.config_path = workdir / "dcmqrscp.cfg"

    @staticmethod
    def make_config(
        *,
        port: int,
        aet: str,
        storage_dir: Path,
        modalities: Modalities | None = None,
        max_studies: int = 500,
        max_bytes_per_study: str = "1024mb",
        max_pdu: int = 65536,
        max_associations: int = 16,
        allowed_callers: Sequence[str] | None = None,
    ) -> str:
        host_lines = [
            f"{key} = ({m_aet}, {m_host}, {m_port})"
            for key, (m_aet, m_host, m_port) in (modalities or {}).items()
        ]
        peers = "ANY"
        if allowed_callers is not None:
            # Only these calling AE titles (and the readiness check's) may associate;
            # dcmqrscp matches the caller's host by reverse lookup: "localhost".
            callers = [READY_CHECK_AET, *allowed_callers]
            host_lines += [f"caller{i} = ({c}, localhost, 0)" for i, c in enumerate(callers)]
            peers = ", ".join(f"caller{i}" for i in range(len(callers)))
        return "\n".join(
            [
                "# written by tests/peers.py",
                f"NetworkTCPPort  = {port}",
                f"MaxPDUSize      = {max_pdu}",
                f"MaxAssociations = {max_associations}",
                "",
                "HostTable BEGIN",
                *host_lines,
                "HostTable END",
                "",
                "VendorTable BEGIN",
                "VendorTable END",
                "",
                "AETable BEGIN",
                f"{aet}  {storage_dir}  RW  ({max_studies}, {max_bytes_per_study})  {peers}",
                "AETable END",
                "",
            ]
        )

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        aet: str = "DCMQR",
        modalities: Modalities | None = None,
        max_studies: int = 500,
        extra_args: Sequence[str] = (),
        debug: bool = False,
        timeout: float = 20.0,
        attempts: int = 3,
        allowed_callers: Sequence[str] | None = None,
    ) -> Dcmqrscp:
        """Start dcmqrscp in ``workdir`` and wait until C-ECHO to ``aet`` succeeds.

        ``modalities``: HostTable entries ``name = (AET, host, port)``, used as
        C-MOVE destinations (``{"medimg": ("MEDIMG", "127.0.0.1", 11113)}``).
        ``extra_args``: more dcmqrscp options (e.g. ``["+U8"]`` to answer in UTF-8).
        ``allowed_callers``: when given, only these calling AE titles are accepted.
        """
        if max_studies > cls.MAX_STUDIES:
            raise ValueError(f"dcmqrscp holds at most {cls.MAX_STUDIES} studies per AE")
        binary = require_binary("dcmqrscp")
        require_binary("echoscu")
        require_binary("storescu")
        for attempt in range(1, attempts + 1):
            (port,) = free_ports(1)
            peer = cls(workdir, port, aet)
            peer.storage_dir.mkdir(parents=True, exist_ok=True)
            peer.config_path.write_text(
                cls.make_config(
                    port=port,
                    aet=aet,
                    storage_dir=peer.storage_dir,
                    modalities=modalities,
                    max_studies=max_studies,
                    allowed_callers=allowed_callers,
                )
            )
            argv = [binary, "-d" if debug else "-v", "-c", str(peer.config_path),
                    *extra_args, str(port)]
            if peer._launch(argv, timeout, "C-ECHO success", may_retry=attempt < attempts):
                return peer
        raise AssertionError("unreachable")

    def echo(self, called_aet: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_dcmtk(
            ["echoscu", "-to", "5", "-aet", READY_CHECK_AET, "-aec", called_aet or self.aet,
             LOOPBACK, str(self.port)],
            timeout=15,
        )

    def _ready(self) -> bool:
        return _tcp_connects(self.port) and self.echo().returncode == 0

    def stored_files(self) -> list[Path]:
        """The files in the storage area (index.dat excluded)."""
        return [p for p in self.storage_dir.iterdir() if p.is_file() and p.name != "index.dat"]

    def load(self, paths: Iterable[Path], chunk: int = 200) -> None:
        """C-STORE the files with DCMTK's storescu, ``chunk`` files per association."""
        files = [str(p) for p in paths]
        for i in range(0, len(files), chunk):
            part = files[i : i + chunk]
            result = run_dcmtk(
                ["storescu", "-R", "-to", "10", "-aet", "MEDIMGLOAD", "-aec", self.aet,
                 LOOPBACK, str(self.port), *part],
                timeout=120,
            )
            if result.returncode != 0 or "Store Failed" in result.stderr:
                raise RuntimeError(
                    f"dcmqrscp: storescu exited {result.returncode} loading "
                    f"{len(part)} files (from {part[0]}):\n{result.stdout}{result.stderr}\n"
                    f"{self.log_tail(10)}"
                )


# --------------------------------------------------------------------------
# storescp


class Storescp(Peer):
    """DCMTK's storescp: a storage SCP writing what it receives to ``output_dir``.

    By default it accepts every storage SOP class in the uncompressed transfer
    syntaxes, one association at a time, and does not check the called AE
    title. ``extra_args`` restrict or change that, e.g. ``+xi`` (Implicit VR
    Little Endian only), ``+B`` (write the received bytes exactly), ``--fork``
    (associations in parallel), ``-xf FILE PROFILE`` (only the presentation
    contexts of a profile), ``--abort-after`` / ``--sleep-during N`` (faults).
    """

    name: ClassVar[str] = "storescp"

    def __init__(self, workdir: Path, port: int, aet: str) -> None:
        super().__init__(workdir, port, aet, None)
        self.output_dir = workdir / "received"

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        aet: str = "STORESCP",
        extra_args: Sequence[str] = (),
        timeout: float = 20.0,
        attempts: int = 3,
    ) -> Storescp:
        """Start storescp in ``workdir`` and wait until C-ECHO to ``aet`` succeeds."""
        binary = require_binary("storescp")
        require_binary("echoscu")
        for attempt in range(1, attempts + 1):
            (port,) = free_ports(1)
            peer = cls(workdir, port, aet)
            peer.output_dir.mkdir(parents=True, exist_ok=True)
            argv = [binary, "-v", "--output-directory", str(peer.output_dir), "-aet", aet,
                    *extra_args, str(port)]
            if peer._launch(argv, timeout, "C-ECHO success", may_retry=attempt < attempts):
                return peer
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        if not _tcp_connects(self.port):
            return False
        result = run_dcmtk(["echoscu", "-to", "5", "-aet", READY_CHECK_AET, "-aec", self.aet,
                            LOOPBACK, str(self.port)], timeout=15)
        return result.returncode == 0

    def received_files(self) -> list[Path]:
        """The files storescp wrote so far, sorted by name."""
        return sorted(p for p in self.output_dir.iterdir() if p.is_file())

    def load(self, paths: Iterable[Path]) -> None:
        raise NotImplementedError("storescp is a destination; it cannot be loaded")


# --------------------------------------------------------------------------
# Several peers


class PeerPool:
    """Starts peers in numbered work directories and stops them all together."""

    def __init__(
        self, base: Path, modalities: Modalities | None = None, *, graceful: bool = True
    ) -> None:
        self.base = base
        self.modalities = modalities
        self.graceful = graceful
        self.peers: list[Peer] = []
        self._count = 0

    def _workdir(self, kind: str) -> Path:
        self._count += 1
        return self.base / f"{kind}-{self._count}"

    def _loaded(self, peer: Peer, paths: Iterable[Path] | None) -> None:
        self.peers.append(peer)
        if paths is not None:
            try:
                peer.load(paths)
            except BaseException:
                peer.stop(graceful=self.graceful)
                raise

    def orthanc(self, *, load: Iterable[Path] | None = None, **kwargs: Any) -> Orthanc:
        """``Orthanc.start(**kwargs)`` (MEDIMG known unless ``modalities`` given), then load."""
        kwargs.setdefault("modalities", self.modalities)
        peer = Orthanc.start(self._workdir("orthanc"), **kwargs)
        self._loaded(peer, load)
        return peer

    def dcmqrscp(self, *, load: Iterable[Path] | None = None, **kwargs: Any) -> Dcmqrscp:
        """``Dcmqrscp.start(**kwargs)`` (MEDIMG known unless ``modalities`` given), then load."""
        kwargs.setdefault("modalities", self.modalities)
        peer = Dcmqrscp.start(self._workdir("dcmqrscp"), **kwargs)
        self._loaded(peer, load)
        return peer

    def storescp(self, **kwargs: Any) -> Storescp:
        """``Storescp.start(**kwargs)``."""
        peer = Storescp.start(self._workdir("storescp"), **kwargs)
        self.peers.append(peer)
        return peer

    def stop_all(self) -> None:
        peers, self.peers = self.peers, []
        stop_all(peers, graceful=self.graceful)
