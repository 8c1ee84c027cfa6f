"""STOW-RS of small instances into Orthanc: medimg stow (DICOMweb profile) vs dicomweb-client.

    .venv/bin/python bench/stow_rs.py [--sizes 500,2000] [--repeat 3]

Data: `generate_many_studies` (single-instance 8x8 CT studies, about 1.6 KB a
file), the same kind of data as bench/store.py's C-STORE figures. Commands:

- `medimg stow bench DIR` with a dicomweb profile (its default batches);
- `medimg stow bench DIR --parallel 4`;
- a Python process that reads every file with pydicom and calls
  dicomweb-client's `DICOMwebClient(url).store_instances(datasets)` (one
  request, which is how that API is used; its memory holds every dataset).

Every run stores into a fresh, empty Orthanc with the DICOMweb plugin (started
before the run, killed after it; not timed). Whole-process wall time (start-up
included) and peak RSS (GNU time), median of the runs, interleaved, ratios to
dicomweb-client. Each run is checked: Orthanc's /statistics must count every
instance afterwards. Two sizes (500 and 2,000 by default) show whether a
tool's memory grows with the number of files; the targets are for the largest.

Needs dicomweb-client (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from common import MEDIMG, Runs, run_once
from dicom_data import generate_many_studies
from peers import Orthanc

ENV = {"TCP_NODELAY": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

DICOMWEB_CLIENT_SCRIPT = '''\
"""store_instances with dicomweb-client: url dir (every *.dcm under dir, read with pydicom)."""
import sys
from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient

url, root = sys.argv[1], Path(sys.argv[2])
datasets = [pydicom.dcmread(p) for p in sorted(root.rglob("*.dcm"))]
client = DICOMwebClient(url, timeout=300)
result = client.store_instances(datasets)
failed = result.get("FailedSOPSequence") if result is not None else None
if failed:
    sys.exit(f"{len(failed)} instances failed")
print(len(datasets))
'''

Argv = Callable[[Orthanc, Path], list[str]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,2000",
                        help="comma-separated instance counts (default 500,2000)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    try:
        import dicomweb_client  # noqa: F401
    except ImportError:
        raise SystemExit("dicomweb-client is missing: pip install -e '.[bench]'") from None

    results: list[tuple[int, list[Runs]]] = []
    with tempfile.TemporaryDirectory(prefix="medimg-bench-") as tmp:
        work = Path(tmp)
        script = work / "dwc_store.py"
        script.write_text(DICOMWEB_CLIENT_SCRIPT)
        for n in sizes:
            print(f"generating {n} instances ...", file=sys.stderr, flush=True)
            data = work / f"data-{n}"
            generate_many_studies(data, n)

            def medimg(*extra: str, data: Path = data) -> Argv:
                def argv(orthanc: Orthanc, config: Path) -> list[str]:
                    return [MEDIMG, "--config", str(config), "stow", "bench", str(data), *extra]
                return argv

            def dwc(orthanc: Orthanc, config: Path, data: Path = data) -> list[str]:
                return [sys.executable, str(script), orthanc.dicomweb_url, str(data)]

            commands: list[tuple[Runs, Argv]] = [
                (Runs("dicomweb-client store_instances", []), dwc),
                (Runs("medimg stow", []), medimg()),
                (Runs("medimg stow --parallel 4", []), medimg("--parallel", "4")),
            ]
            run_fresh(work, commands, args.repeat, n)
            results.append((n, [r for r, _ in commands]))

    for n, runs in results:
        base = runs[0]
        print(f"\nSTOW-RS of {n:,} small instances into an empty Orthanc  (median of "
              f"{len(base.walls)}; ratio = wall / {base.name})")
        print(f"{'command':<34} {'wall s':>8} {'ratio':>7} {'inst/s':>8} {'peak RSS MiB':>13}"
              "  each run, s")
        for r in runs:
            each = " ".join(f"{w:.2f}" for w in r.walls)
            print(f"{r.name:<34} {r.wall:>8.3f} {r.wall / base.wall:>6.2f}x {n / r.wall:>8.0f} "
                  f"{r.peak:>13.1f}  {each}")

    n, runs = results[-1]
    dwc_runs, single = runs[0], runs[1]
    print("\nTargets (issue 4):")
    ok = single.wall <= dwc_runs.wall
    print(f"  [{'ok  ' if ok else 'MISS'}] {n}: medimg stow {single.wall / dwc_runs.wall:.2f}x "
          f"dicomweb-client's wall time (target <= 1x)")
    if len(results) > 1:
        n0, runs0 = results[0]
        growth = single.peak - runs0[1].peak
        flat = growth < 10.0
        print(f"  [{'ok  ' if flat else 'MISS'}] medimg stow peak RSS {runs0[1].peak:.1f} MiB at "
              f"{n0} -> {single.peak:.1f} MiB at {n} instances (flat: grows < 10 MiB)")
        print(f"  dicomweb-client peak RSS {runs0[0].peak:.1f} MiB at {n0} -> "
              f"{dwc_runs.peak:.1f} MiB at {n} instances")


def run_fresh(work: Path, commands: Sequence[tuple[Runs, Argv]], repeat: int,
              expected: int) -> None:
    """Run every command `repeat` times, interleaved, each into a new Orthanc."""
    for round_ in range(repeat):
        for i, (runs, argv) in enumerate(commands):
            orthanc = Orthanc.start(work / f"orthanc-{expected}-{round_}-{i}")
            try:
                config = work / "medimg.toml"
                config.write_text(orthanc.dicomweb_profile_toml("bench"))
                wall, rss = run_once(argv(orthanc, config), env=ENV)
                stored = orthanc.statistics()["CountInstances"]
                if stored != expected:
                    raise SystemExit(f"{runs.name}: Orthanc holds {stored} of {expected}")
                runs.walls.append(wall)
                runs.rss.append(rss)
                print(f"  [{expected} {round_ + 1}/{repeat}] {runs.name:<34} {wall:7.3f} s "
                      f"{rss:7.1f} MiB", file=sys.stderr, flush=True)
            finally:
                orthanc.stop(graceful=False)


if __name__ == "__main__":
    main()
