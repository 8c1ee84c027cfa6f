"""A short tour of medimg against a local PACS (`make demo`).

Starts Orthanc (Debian packages `orthanc`, `orthanc-dicomweb`) on free
loopback ports with a few generated studies, writes a DIMSE and a DICOMweb
profile for it, runs medimg's main commands on it and stops it again. Until
`medimg sandbox` exists, this is the quick start.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from dicom_data import generate  # noqa: E402
from peers import Orthanc  # noqa: E402

MEDIMG = str(Path(sys.executable).parent / "medimg")


def step(title: str, *args: str, config: Path) -> None:
    shown = " ".join(shlex.quote(a) for a in ("medimg", *args))
    print(f"\n\033[1m# {title}\033[0m\n$ {shown}", flush=True)
    env = {**os.environ, "MEDIMG_CONFIG": str(config), "COLUMNS": os.environ.get("COLUMNS", "160")}
    code = subprocess.run([MEDIMG, *args], env=env).returncode
    print(f"(exit {code})", flush=True)


def main() -> int:
    if shutil.which("Orthanc") is None and not Path("/usr/sbin/Orthanc").exists():
        print("make demo needs Orthanc: sudo apt-get install orthanc", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="medimg-demo-") as tmp:
        work = Path(tmp)
        manifest = generate(work / "data")
        orthanc = Orthanc.start(work / "orthanc", check_called_aet=True)
        try:
            orthanc.load(manifest.paths)
            config = work / "config.toml"
            config.write_text(orthanc.profile_toml("demo-pacs") + "\n"
                              + orthanc.dicomweb_profile_toml("demo-web"))
            print(f"Orthanc is serving {len(manifest.studies)} studies as "
                  f"{orthanc.aet}@127.0.0.1:{orthanc.port}; profile 'demo-pacs' in {config}")
            step("Which profiles are there?", "profiles", config=config)
            step("Is the PACS there, and how does the association go?",
                 "-v", "echo", "demo-pacs", "--count", "2", "--interval", "0.2", config=config)
            step("Studies of patients called DOE*, as a table",
                 "find", "demo-pacs", "--name", "DOE*", "--format", "table", config=config)
            step("MR studies in the first half of 2024, as JSON lines (what scripts read)",
                 "find", "demo-pacs", "--modality", "MR", "--date", "20240101-20240630",
                 "--format", "jsonl", "--limit", "1", config=config)
            step("Series of one patient, as UID lines for move/get",
                 "find", "demo-pacs", "--level", "series", "--patient-id", "PAT004",
                 "--format", "uids", config=config)
            study = manifest.studies[0].study_uid
            step("Retrieve a study by C-GET (no inbound port needed)",
                 "get", "demo-pacs", study, "--out", str(work / "got"), config=config)
            step("The same study by WADO-RS: only the profile name changes",
                 "get", "demo-web", study, "--out", str(work / "web"), config=config)
            step("Its QIDO-RS answer is the same as C-FIND's",
                 "find", "demo-web", "--study-uid", study, "--format", "jsonl", config=config)
            step("Send the retrieved files back (C-STORE)",
                 "stow", "demo-pacs", str(work / "got"), config=config)
            step("A wrong AE title is diagnosed (exit 4 expected)",
                 "echo", "demo-pacs", "--aec", "NOT_ORTHANC", config=config)
        finally:
            orthanc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
