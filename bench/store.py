"""C-STORE of 2,000 small instances into Orthanc: medimg stow vs DCMTK storescu vs pynetdicom.

    .venv/bin/python bench/store.py [--instances 2000] [--repeat 3] [--skip-pynetdicom]

Every run stores into a fresh, empty Orthanc (started before the run, killed
after it; not timed), so that each tool meets the same state. Whole-process
wall time (start-up included) and peak RSS, median of the runs, interleaved,
printed with ratios to DCMTK. Each run is checked: Orthanc must hold every
instance afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from common import MEDIMG, Runs, report, run_once
from dicom_data import generate_many_studies
from peers import Orthanc

HOST = "127.0.0.1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-pynetdicom", action="store_true",
                        help="leave out pynetdicom's storescu (about 100 s per run)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="medimg-bench-") as tmp:
        work = Path(tmp)
        print(f"generating {args.instances} instances ...", file=sys.stderr)
        data = work / "data"
        generate_many_studies(data, args.instances)

        def medimg(*extra: str) -> Callable[[Orthanc, Path], list[str]]:
            def argv(orthanc: Orthanc, config: Path) -> list[str]:
                return [MEDIMG, "--config", str(config), "stow", "bench", str(data), *extra]
            return argv

        commands: list[tuple[Runs, Callable[[Orthanc, Path], list[str]]]] = [
            (Runs("DCMTK storescu", []), lambda o, c: [
                "storescu", "-aec", o.aet, HOST, str(o.port), "+sd", str(data)]),
            (Runs("medimg stow", []), medimg()),
            (Runs("medimg stow --parallel 4", []), medimg("--parallel", "4")),
        ]
        if not args.skip_pynetdicom:
            commands.append((Runs("python -m pynetdicom storescu", []), lambda o, c: [
                sys.executable, "-m", "pynetdicom", "storescu", "-aec", o.aet, HOST,
                str(o.port), str(data), "-r"]))
        run_fresh(work, commands, args.repeat, args.instances)

    runs = [r for r, _ in commands]
    report(f"C-STORE of {args.instances} small instances into an empty Orthanc", runs,
           "DCMTK storescu")
    for r in runs:
        print(f"  {r.name}: " + ", ".join(f"{w:.2f}" for w in r.walls) + " s")
    dcmtk, single, parallel = runs[:3]
    print(f"medimg stow vs DCMTK: {single.wall / dcmtk.wall:.2f}x the wall time "
          "(target <= 3x)")
    print(f"medimg stow --parallel 4 vs DCMTK: {parallel.wall / dcmtk.wall:.2f}x")
    if len(runs) > 3:
        pynd = runs[3]
        print(f"pynetdicom app vs medimg stow: {pynd.wall / single.wall:.2f}x slower "
              "(target >= 2.5x)")


def run_fresh(
    work: Path,
    commands: Sequence[tuple[Runs, Callable[[Orthanc, Path], list[str]]]],
    repeat: int,
    expected: int,
) -> None:
    """Run every command `repeat` times, interleaved, each into a new Orthanc."""
    for round_ in range(repeat):
        for i, (runs, argv) in enumerate(commands):
            orthanc = Orthanc.start(work / f"orthanc-{round_}-{i}", dicomweb=False)
            try:
                config = work / "medimg.toml"
                config.write_text(orthanc.profile_toml("bench"))
                print(f"  {runs.name} (run {round_ + 1}) ...", file=sys.stderr)
                wall, rss = run_once(argv(orthanc, config), env={"TCP_NODELAY": "1"})
                stored = orthanc.statistics()["CountInstances"]
                if stored != expected:
                    raise SystemExit(f"{runs.name}: Orthanc holds {stored} of {expected}")
                runs.walls.append(wall)
                runs.rss.append(rss)
            finally:
                orthanc.stop(graceful=False)


if __name__ == "__main__":
    main()
