"""A short tour of medimg against `medimg sandbox` (`make demo`).

Starts the sandbox in the background on free loopback ports with a new data
folder (so it holds the demo studies), lets it write its three profiles into a
temporary config, runs medimg's main commands on it -- DIMSE, DICOMweb and
(when the `fhir` command exists) FHIR -- and stops it again. Nothing else is
needed: no Orthanc, no DCMTK.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEDIMG = str(Path(sys.executable).parent / "medimg")
BOLD, PLAIN = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def step(title: str, *args: str, env: dict[str, str]) -> int:
    shown = " ".join(shlex.quote(a) for a in ("medimg", *args))
    print(f"\n{BOLD}# {title}{PLAIN}\n$ {shown}", flush=True)
    code = subprocess.run([MEDIMG, *args], env=env).returncode
    print(f"(exit {code})", flush=True)
    return code


def has_fhir_command() -> bool:
    probe = subprocess.run([MEDIMG, "fhir", "--help"], capture_output=True, text=True)
    return probe.returncode == 0 and "patient" in probe.stdout


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="medimg-demo-") as tmp:
        work = Path(tmp)
        dicom_port, http_port, receive_port = free_ports(3)
        config = work / "config.toml"
        config.write_text(f"[defaults]\ncalling_aet = \"MEDIMG\"\nreceive_port = {receive_port}\n")
        env = {**os.environ, "MEDIMG_CONFIG": str(config),
               "COLUMNS": os.environ.get("COLUMNS", "160")}
        log = open(work / "sandbox.log", "w")  # noqa: SIM115 - closed below
        sandbox = subprocess.Popen(
            [MEDIMG, "sandbox", "--data", str(work / "data"), "--dicom-port", str(dicom_port),
             "--http-port", str(http_port), "--move-dest", f"MEDIMG=127.0.0.1:{receive_port}",
             "--write-profiles"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not (answers(dicom_port) and answers(http_port)):
                if sandbox.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    print((work / "sandbox.log").read_text(), file=sys.stderr)
                    print("make demo: the sandbox did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            print(f"{BOLD}medimg sandbox{PLAIN} is serving demo studies: DICOM "
                  f"SANDBOX@127.0.0.1:{dicom_port}, HTTP 127.0.0.1:{http_port} "
                  f"(profiles written to {config})")
            failures = 0
            failures += step("Which profiles are there?", "profiles", env=env) != 0
            failures += step("Is the PACS there, and how does the association go?",
                             "-v", "echo", "sandbox", "--count", "2", "--interval", "0.2",
                             env=env) != 0
            failures += step("Studies of patients called DOE*, as a table",
                             "find", "sandbox", "--name", "DOE*", "--format", "table",
                             env=env) != 0
            failures += step("MR studies in the first half of 2024, as JSON lines "
                             "(what scripts read)", "find", "sandbox", "--modality", "MR",
                             "--date", "20240101-20240630", "--format", "jsonl",
                             env=env) != 0
            failures += step("Series of one patient, as UID lines for move/get",
                             "find", "sandbox", "--level", "series", "--patient-id",
                             "DEMO003", "--format", "uids", env=env) != 0
            found = subprocess.run([MEDIMG, "find", "sandbox", "--patient-id", "DEMO001",
                                    "--format", "uids", "--limit", "1"], env=env,
                                   capture_output=True, text=True).stdout.split()
            study = found[0] if found else ""
            failures += step("Retrieve a study by C-MOVE (to medimg's own receiver)",
                             "move", "sandbox", study, "--out", str(work / "moved"),
                             env=env) != 0
            failures += step("The same by C-GET (no inbound port needed)",
                             "get", "sandbox", study, "--out", str(work / "got"), env=env) != 0
            failures += step("The same by WADO-RS",
                             "wadoget", "sandbox-web", study, "--out", str(work / "web"),
                             env=env) != 0
            failures += step("Its QIDO-RS answer is the same as C-FIND's",
                             "find", "sandbox-web", "--study-uid", study, "--format", "jsonl",
                             env=env) != 0
            failures += step("Send the retrieved files back by STOW-RS",
                             "stow", "sandbox-web", str(work / "got"), env=env) != 0
            if has_fhir_command():
                failures += step("The EHR side: a patient over FHIR R4, by name",
                                 "fhir", "patient", "sandbox-fhir", "--name", "Müller",
                                 "--format", "table", env=env) != 0
                failures += step("Their imaging studies, as DICOM Study UIDs",
                                 "fhir", "studies", "sandbox-fhir", "--patient", "DEMO003",
                                 "--format", "uids", env=env) != 0
            wrong = step("A wrong AE title is diagnosed (exit 4 expected)",
                         "echo", "sandbox", "--aec", "NOT_SANDBOX", env=env)
            failures += wrong != 4
        finally:
            os.killpg(sandbox.pid, signal.SIGTERM)
            try:
                sandbox.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(sandbox.pid, signal.SIGKILL)
                sandbox.wait()
            log.close()
        lines = (work / "sandbox.log").read_text().splitlines()
        print(f"\n{BOLD}# What the sandbox printed (last lines){PLAIN}")
        print("\n".join(lines[-8:]))
    seconds = time.monotonic() - started
    if failures:
        print(f"\nmake demo: {failures} step(s) did not do what was expected "
              f"({seconds:.0f} s)", file=sys.stderr)
        return 1
    print(f"\nmake demo: every step worked ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
