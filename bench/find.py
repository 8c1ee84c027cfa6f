"""C-FIND of 3,000 studies from Orthanc: medimg vs DCMTK findscu vs pynetdicom's findscu.

    .venv/bin/python bench/find.py [--studies 3000] [--repeat 3]

Whole-process wall time (start-up included) and peak RSS, median of the
runs, same Orthanc, same return keys, printed with ratios to DCMTK.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import MEDIMG, Runs, measure, report
from dicom_data import generate_many_studies
from peers import Orthanc

KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "StudyDescription", "ModalitiesInStudy",
    "ReferringPhysicianName", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    "StudyInstanceUID",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="medimg-bench-") as tmp:
        work = Path(tmp)
        print(f"generating and loading {args.studies} studies into Orthanc ...", file=sys.stderr)
        manifest = generate_many_studies(work / "data", args.studies)
        orthanc = Orthanc.start(work / "orthanc", dicomweb=False)
        try:
            orthanc.load(manifest.paths)
            config = work / "medimg.toml"
            config.write_text(orthanc.profile_toml("bench"))
            host, port, aec = "127.0.0.1", str(orthanc.port), orthanc.aet
            dcmtk_keys = [a for k in KEYS for a in ("-k", k)]
            pynd_keys = [a for k in KEYS for a in ("-k", f"{k}=")]
            runs = [
                Runs("DCMTK findscu", ["findscu", "-S", "-aec", aec, "-k",
                                       "QueryRetrieveLevel=STUDY", *dcmtk_keys, host, port]),
                Runs("medimg find --format jsonl",
                     [MEDIMG, "--config", str(config), "find", "bench", "--format", "jsonl"]),
                Runs("python -m pynetdicom findscu",
                     [sys.executable, "-m", "pynetdicom", "findscu", "-S", "-aec", aec,
                      "-k", "QueryRetrieveLevel=STUDY", *pynd_keys, host, port]),
            ]
            measure(runs, args.repeat, env={"TCP_NODELAY": "1"})
        finally:
            orthanc.stop()
    report(f"C-FIND, study level, {args.studies} matches from Orthanc", runs, "DCMTK findscu")
    dcmtk, medimg, pynd = runs
    print(f"medimg vs DCMTK: {medimg.wall / dcmtk.wall:.2f}x the wall time (target <= 2.5x)")
    print(f"pynetdicom app vs medimg: {pynd.wall / medimg.wall:.2f}x slower (target >= 2.5x)")


if __name__ == "__main__":
    main()
