"""`medimg sandbox` as a test peer, with the same interface as the peers in peers.py.

Started as a subprocess (``python -m medimg_cli sandbox``) on free loopback
ports, with ``--empty`` so that it holds only what the test gives it:
``preload`` files are copied into its data folder before start (indexed in
place), ``load(paths)`` sends more with DCMTK's storescu (C-STORE).
"""

from __future__ import annotations

import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from peers import (
    LOOPBACK,
    Modalities,
    Peer,
    _profile_toml,
    _tcp_connects,
    free_ports,
    run_dcmtk,
)


class Sandbox(Peer):
    """medimg's own sandbox: DIMSE (AE SANDBOX), DICOMweb and FHIR on one HTTP port."""

    name: ClassVar[str] = "sandbox"
    implementation_class_uid_prefix: ClassVar[str] = "2.25.186302817839611744452536069613532962874"

    def __init__(self, workdir: Path, port: int, aet: str, http_port: int) -> None:
        super().__init__(workdir, port, aet, f"http://{LOOPBACK}:{http_port}")
        self.http_port = http_port
        self.data_dir = workdir / "data"
        self.argv: list[str] = []
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def fhir_url(self) -> str:
        return f"{self.http_url}/fhir"

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        aet: str = "SANDBOX",
        modalities: Modalities | None = None,
        preload: Iterable[Path] = (),
        demo: bool = False,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
        attempts: int = 3,
    ) -> Sandbox:
        """Start the sandbox in ``workdir`` and wait until DIMSE and HTTP answer.

        ``modalities``: C-MOVE destinations ``{"MEDIMG": ("MEDIMG", "127.0.0.1", port)}``.
        ``preload``: files copied into the data folder first (indexed at start).
        ``demo``: a new data folder gets the demo studies (otherwise ``--empty``).
        """
        workdir.mkdir(parents=True, exist_ok=True)
        preload = list(preload)
        for attempt in range(1, attempts + 1):
            dicom_port, http_port = free_ports(2)
            peer = cls(workdir, dicom_port, aet, http_port)
            if preload and not peer.data_dir.exists():
                target = peer.data_dir / "import"
                target.mkdir(parents=True)
                for i, path in enumerate(preload):
                    shutil.copyfile(path, target / f"{i:05d}.dcm")
            peer.argv = [sys.executable, "-m", "medimg_cli", "sandbox", "--data",
                         str(peer.data_dir), "--host", LOOPBACK, "--dicom-port", str(dicom_port),
                         "--http-port", str(http_port), "--aet", aet]
            for m_aet, m_host, m_port in (modalities or {}).values():
                peer.argv += ["--move-dest", f"{m_aet}={m_host}:{m_port}"]
            if not demo:
                peer.argv.append("--empty")
            peer.argv += list(extra_args)
            if peer._launch(peer.argv, timeout, "DIMSE and HTTP answer",
                            may_retry=attempt < attempts):
                return peer
        raise AssertionError("unreachable")

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (SIGTERM) and start again on the same ports and data folder."""
        self.stop(graceful=True)
        t0 = time.monotonic()
        self._spawn(self.argv)
        self._wait_ready(self._ready, timeout, "DIMSE and HTTP answer")
        self.started_seconds = time.monotonic() - t0

    def _ready(self) -> bool:
        if not (_tcp_connects(self.port) and _tcp_connects(self.http_port)):
            return False
        try:
            with self._opener.open(f"{self.http_url}/", timeout=2) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response's socket open until closed
            return False
        except (urllib.error.URLError, OSError):
            return False

    def get(self, path: str, accept: str = "application/json") -> tuple[int, dict[str, str],
                                                                           bytes]:
        """GET ``path`` (under http_url): (status, headers, body), HTTP errors included."""
        req = urllib.request.Request(f"{self.http_url}{path}", headers={"Accept": accept})
        try:
            with self._opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:  # an HTTPError holds the response's socket open until closed
                return exc.code, dict(exc.headers), exc.read()

    def request(self, method: str, path: str, body: bytes,
                content_type: str) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(f"{self.http_url}{path}", data=body, method=method,
                                     headers={"Content-Type": content_type})
        try:
            with self._opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:  # an HTTPError holds the response's socket open until closed
                return exc.code, dict(exc.headers), exc.read()

    def load(self, paths: Iterable[Path], chunk: int = 200) -> None:
        """C-STORE the files with DCMTK's storescu."""
        files = [str(p) for p in paths]
        for i in range(0, len(files), chunk):
            part = files[i : i + chunk]
            result = run_dcmtk(["storescu", "-to", "10", "-aet", "MEDIMGLOAD", "-aec", self.aet,
                                LOOPBACK, str(self.port), *part], timeout=120)
            if result.returncode != 0 or "Store Failed" in result.stderr:
                raise RuntimeError(f"sandbox: storescu exited {result.returncode}:\n"
                                   f"{result.stdout}{result.stderr}\n{self.log_tail(10)}")

    def dicomweb_profile_toml(self, name: str, **overrides: Any) -> str:
        base: dict[str, Any] = {"type": "dicomweb", "url": self.dicomweb_url, "auth": "none"}
        return _profile_toml(name, base, overrides)

    def fhir_profile_toml(self, name: str, **overrides: Any) -> str:
        base: dict[str, Any] = {"type": "fhir", "url": self.fhir_url, "auth": "none"}
        return _profile_toml(name, base, overrides)
