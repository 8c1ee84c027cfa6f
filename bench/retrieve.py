"""C-MOVE and C-GET of one study from Orthanc: medimg vs DCMTK vs pynetdicom's apps.

    .venv/bin/python bench/retrieve.py [--repeat 3] [--only small|large] [--small N]

Two data sets in one Orthanc (DICOM only, TCP_NODELAY=1):

- small: 2,000 instances, 64x64 16-bit, 4 series of one study;
- large: 120 instances, 512x512 16-bit (about 60 MB), one study.

For each: `medimg move` (embedded SCP) vs DCMTK `movescu --port` vs
`python -m pynetdicom movescu --store`, and `medimg get` vs DCMTK `getscu` vs
`python -m pynetdicom getscu`; plus `medimg move/get --parallel 4` when the
installed medimg has that option. Whole-process wall time (start-up
included) and peak RSS, median of the runs, interleaved. Every run writes into
a fresh empty directory (emptied outside the timed part), and every run's
directory must then hold exactly the study's files: otherwise the benchmark
stops with an error.

All receivers (medimg's, movescu's, pynetdicom's) use AE title MEDIMG on the
same port, one at a time; Orthanc knows it as its move destination "MEDIMG".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import MEDIMG, DataSet, OutputRuns, measure_fresh
from dicom_data import generate_one_study
from peers import Orthanc, free_port

ENV = {"TCP_NODELAY": "1"}
RECEIVER_AET = "MEDIMG"

# Targets from issue 3 ("Speed").
ONE_ASSOC_VS_DCMTK = {"small": 3.0, "large": 1.5}
PARALLEL_VS_DCMTK_SMALL = 2.0
PYNETDICOM_OVER_MEDIMG = 2.5
PEAK_RSS_MIB = 150.0


@dataclass
class Bench(OutputRuns):
    kind: str = ""  # "move" | "get"
    tool: str = ""  # "dcmtk" | "medimg" | "medimg-parallel" | "pynetdicom"


def has_parallel(kind: str) -> bool:
    result = subprocess.run([MEDIMG, kind, "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"}, check=False)
    return "--parallel" in result.stdout


def commands(ds: DataSet, orthanc: Orthanc, config: Path, port: int, work: Path,
             parallel: dict[str, bool]) -> list[Bench]:
    host, peer_port, aec = "127.0.0.1", str(orthanc.port), orthanc.aet
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.study_uid}"]
    py = [sys.executable, "-m", "pynetdicom"]
    benches: list[Bench] = []

    def add(name: str, kind: str, tool: str, argv_for_out: list[str], out: Path) -> None:
        benches.append(Bench(name, argv_for_out, out=out, kind=kind, tool=tool))

    for kind in ("move", "get"):
        def out(tag: str, kind: str = kind) -> Path:
            return work / "out" / f"{ds.name}-{kind}-{tag}"

        o = out("dcmtk")
        if kind == "move":
            add("DCMTK movescu --port", kind, "dcmtk",
                ["movescu", "-S", "-aec", aec, "-aet", RECEIVER_AET, "--port", str(port),
                 "-od", str(o), *keys, host, peer_port], o)
        else:
            add("DCMTK getscu", kind, "dcmtk",
                ["getscu", "-S", "-aec", aec, "-aet", RECEIVER_AET, "-od", str(o), *keys,
                 host, peer_port], o)
        o = out("medimg")
        add(f"medimg {kind}", kind, "medimg",
            [MEDIMG, "--config", str(config), kind, "bench", ds.study_uid, "--out", str(o)], o)
        if parallel[kind]:
            o = out("medimg-p4")
            add(f"medimg {kind} --parallel 4", kind, "medimg-parallel",
                [MEDIMG, "--config", str(config), kind, "bench", ds.study_uid, "--out", str(o),
                 "--parallel", "4"], o)
        o = out("pynetdicom")
        if kind == "move":
            add("python -m pynetdicom movescu", kind, "pynetdicom",
                [*py, "movescu", "-S", "-aec", aec, "-aet", RECEIVER_AET,
                 "-aem", RECEIVER_AET, "--store", "--store-port", str(port),
                 "--store-aet", RECEIVER_AET, "-od", str(o), *keys, host, peer_port], o)
        else:
            add("python -m pynetdicom getscu", kind, "pynetdicom",
                [*py, "getscu", "-S", "-aec", aec, "-aet", RECEIVER_AET, "-od", str(o),
                 *keys, host, peer_port], o)
    return benches



def check_output(b: Bench, ds: DataSet) -> None:
    files = [p for p in b.out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    # each received file holds at least the dataset as Orthanc stored it, give or
    # take the file meta; 90% of the source bytes is a loose floor against empty files
    if len(files) != ds.count or size < 0.9 * ds.dataset_bytes:
        listing = "\n  ".join(str(p) for p in files[:5])
        raise SystemExit(
            f"FAILED: {b.name} ({ds.name}) left {len(files)} files / {size} bytes in {b.out}, "
            f"expected {ds.count} files / ~{ds.dataset_bytes} bytes\n  {listing}\n"
            f"command: {' '.join(b.argv)}"
        )




def report_kind(ds: DataSet, kind: str, benches: list[Bench]) -> list[str]:
    """Print one table (ratios to DCMTK); return the target lines."""
    runs = [b for b in benches if b.kind == kind]
    dcmtk = next(b for b in runs if b.tool == "dcmtk")
    pynd = next(b for b in runs if b.tool == "pynetdicom")
    verb = "C-MOVE to own receiver" if kind == "move" else "C-GET"
    print(f"\n{verb}, {ds.title}  (median of {len(dcmtk.walls)}; ratio = wall / {dcmtk.name})")
    print(f"{'command':<34} {'wall s':>8} {'ratio':>7} {'peak RSS MiB':>13}  each run, s")
    for r in runs:
        each = " ".join(f"{w:.2f}" for w in r.walls)
        print(f"{r.name:<34} {r.wall:>8.3f} {r.wall / dcmtk.wall:>6.2f}x {r.peak:>13.1f}  {each}")

    lines = []

    def target(ok: bool, text: str) -> None:
        lines.append(f"  [{'ok  ' if ok else 'MISS'}] {ds.name} {kind}: {text}")

    for r in runs:
        if r.tool == "medimg":
            limit = ONE_ASSOC_VS_DCMTK[ds.name]
            ratio = r.wall / dcmtk.wall
            target(ratio <= limit, f"{r.name} {ratio:.2f}x DCMTK (target <= {limit:g}x)")
        if r.tool == "medimg-parallel" and ds.name == "small":
            ratio = r.wall / dcmtk.wall
            target(ratio <= PARALLEL_VS_DCMTK_SMALL,
                   f"{r.name} {ratio:.2f}x DCMTK's single association "
                   f"(target <= {PARALLEL_VS_DCMTK_SMALL:g}x)")
        if r.tool.startswith("medimg"):
            faster = pynd.wall / r.wall
            target(faster >= PYNETDICOM_OVER_MEDIMG,
                   f"pynetdicom app {faster:.2f}x slower than {r.name} "
                   f"(target >= {PYNETDICOM_OVER_MEDIMG:g}x)")
            target(r.peak < PEAK_RSS_MIB,
                   f"{r.name} peak RSS {r.peak:.1f} MiB (target < {PEAK_RSS_MIB:g} MiB)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("small", "large"))
    parser.add_argument("--small", type=int, default=2000,
                        help="instances in the small data set (4 series)")
    parser.add_argument("--large", type=int, default=120)
    args = parser.parse_args()
    if args.small % 4:
        parser.error("--small must be a multiple of 4 (4 series)")

    parallel = {kind: has_parallel(kind) for kind in ("move", "get")}
    for kind, present in parallel.items():
        if not present:
            print(f"note: `medimg {kind} --help` has no --parallel: no --parallel 4 runs",
                  file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="medimg-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        print("generating data sets ...", file=sys.stderr, flush=True)
        sets = []
        if args.only in (None, "small"):
            sets.append(DataSet(
                "small", f"{args.small:,} instances 64x64 16-bit, 4 series",
                generate_one_study(work / "small", 4, args.small // 4, 64, 64)))
        if args.only in (None, "large"):
            sets.append(DataSet(
                "large", f"{args.large} instances 512x512 16-bit",
                generate_one_study(work / "large", 1, args.large, 512, 512)))
        orthanc = Orthanc.start(work / "orthanc", dicomweb=False,
                                modalities={RECEIVER_AET: (RECEIVER_AET, "127.0.0.1", port)})
        config = work / "medimg.toml"
        config.write_text(
            f'[defaults]\ncalling_aet = "{RECEIVER_AET}"\nreceive_port = {port}\n\n'
            + orthanc.profile_toml("bench"))
        results: list[tuple[DataSet, list[Bench]]] = []
        try:
            for ds in sets:
                print(f"loading {ds.count} instances ({ds.dataset_bytes / 1e6:.1f} MB) "
                      "into Orthanc ...", file=sys.stderr, flush=True)
                orthanc.load(ds.manifest.paths)
                benches = commands(ds, orthanc, config, port, work, parallel)
                measure_fresh(benches, ds.name, args.repeat,
                              lambda b, ds=ds: check_output(b, ds), ENV)
                results.append((ds, benches))
        finally:
            orthanc.stop()

    targets: list[str] = []
    for ds, benches in results:
        for kind in ("move", "get"):
            targets += report_kind(ds, kind, benches)
    print("\nTargets (issue 3):")
    print("\n".join(targets))
    if parallel["move"] or parallel["get"]:
        print("  (peak RSS of a --parallel run is its largest single process, as GNU time "
              "reports it, not the sum over processes)")
    if not (parallel["move"] and parallel["get"]):
        print("  (no --parallel runs: the installed medimg has no --parallel option)")


if __name__ == "__main__":
    main()
