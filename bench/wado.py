"""WADO-RS retrieve of one study from Orthanc: medimg wadoget vs curl vs dicomweb-client.

    .venv/bin/python bench/wado.py [--repeat 3] [--only 60mb|600mb]

Two studies in one Orthanc (DICOMweb plugin), loaded once:

- 60mb: 120 instances, 512x512 16-bit, one series (about 63 MB);
- 600mb: 1,200 instances, 512x512 16-bit, 4 series of 300 (about 630 MB):
  the same instances as 60mb, ten times as many, so only the study size changes.

For each: `medimg wadoget PROFILE STUDY --out DIR` vs `curl` saving the raw
multipart/related response of GET studies/UID (Accept with transfer-syntax=*)
vs a Python process that calls dicomweb-client's
`DICOMwebClient(url).retrieve_study(uid)` and writes each dataset with
`ds.save_as` (its own process, so its memory shows). dicomweb-client asks for
its default transfer syntax (explicit VR little endian), which is how the
studies are stored: Orthanc transcodes nothing for anyone.

Whole-process wall time (start-up included) and peak RSS (GNU time), median of
the runs, interleaved; throughput = study bytes (the source files) / wall;
ratios to curl. Every run writes into a fresh location (emptied outside the
timed part) and is checked: wadoget and dicomweb-client must leave exactly the
study's file count with at least 90% of its bytes; curl's file must hold one
part per instance (counted by boundary) and at least the study's bytes.

Needs dicomweb-client (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import MEDIMG, DataSet, OutputRuns, measure_fresh
from dicom_data import generate_one_study
from peers import Orthanc

ENV = {"TCP_NODELAY": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'

# Targets from issue 4 ("Benchmarks").
THROUGHPUT_VS_CURL = 0.8
PEAK_RSS_MIB = 100.0

DICOMWEB_CLIENT_SCRIPT = '''\
"""retrieve_study with dicomweb-client, then save every dataset: url uid out_dir."""
import sys
from pathlib import Path

from dicomweb_client.api import DICOMwebClient

url, uid, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
client = DICOMwebClient(url, timeout=120)
datasets = client.retrieve_study(uid)
for ds in datasets:
    ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
print(len(datasets))
'''


@dataclass
class Bench(OutputRuns):
    tool: str = ""  # "curl" | "medimg" | "dicomweb-client"


def commands(ds: DataSet, orthanc: Orthanc, config: Path, script: Path, work: Path) -> list[Bench]:
    base = work / "out" / ds.name
    url = f"{orthanc.dicomweb_url}/studies/{ds.study_uid}"
    curl_out = base / "curl" / "study.multipart"
    return [
        Bench("curl (raw multipart)",
              ["curl", "-s", "--fail", "--noproxy", "*", "-o", str(curl_out),
               "-H", f"Accept: {ACCEPT}", url],
              out=curl_out.parent, tool="curl"),
        Bench("medimg wadoget",
              [MEDIMG, "--config", str(config), "wadoget", "bench", ds.study_uid,
               "--out", str(base / "medimg")],
              out=base / "medimg", tool="medimg"),
        Bench("dicomweb-client retrieve_study",
              [sys.executable, str(script), orthanc.dicomweb_url, ds.study_uid,
               str(base / "dwc")],
              out=base / "dwc", tool="dicomweb-client"),
    ]



def count_parts(path: Path) -> int:
    """Parts in a raw multipart/related body: delimiter lines after the first one."""
    with path.open("rb") as f:
        first = f.readline().rstrip(b"\r\n")
        if not first.startswith(b"--"):
            return -1
        delimiter = b"\r\n" + first
        count, tail = 0, b""
        while chunk := f.read(1 << 20):
            buf = tail + chunk
            count += buf.count(delimiter)
            tail = buf[-(len(delimiter) - 1):]
    # the first delimiter has no CRLF before it; the close delimiter ("--b--") is counted
    return count  # 1 (first) + (n - 1) inner + 1 close - 1 (close) = n


def check_output(b: Bench, ds: DataSet) -> None:
    files = [p for p in b.out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    if b.tool == "curl":
        parts = count_parts(files[0]) if len(files) == 1 else -1
        ok = parts == ds.count and size >= ds.dataset_bytes
        got = f"{len(files)} file(s) / {size} bytes / {parts} parts"
    else:
        ok = len(files) == ds.count and size >= 0.9 * ds.dataset_bytes
        got = f"{len(files)} files / {size} bytes"
    if not ok:
        raise SystemExit(
            f"FAILED: {b.name} ({ds.name}) left {got} in {b.out}, expected {ds.count} "
            f"instances / ~{ds.dataset_bytes} bytes\ncommand: {' '.join(b.argv)}")




def report_set(ds: DataSet, benches: list[Bench]) -> list[str]:
    curl = next(b for b in benches if b.tool == "curl")
    mb = ds.dataset_bytes / 1e6
    print(f"\nWADO-RS GET studies/UID, {ds.title}, {mb:.1f} MB  (median of {len(curl.walls)}; "
          f"throughput = {mb:.1f} MB / wall; x curl = throughput / curl's)")
    print(f"{'command':<32} {'wall s':>8} {'MB/s':>8} {'x curl':>7} {'peak RSS MiB':>13}"
          "  each run, s")
    for r in benches:
        each = " ".join(f"{w:.2f}" for w in r.walls)
        print(f"{r.name:<32} {r.wall:>8.3f} {mb / r.wall:>8.1f} {curl.wall / r.wall:>6.2f}x "
              f"{r.peak:>13.1f}  {each}")
    lines = []
    medimg = next(b for b in benches if b.tool == "medimg")
    ratio = curl.wall / medimg.wall
    lines.append(f"  [{'ok  ' if ratio >= THROUGHPUT_VS_CURL else 'MISS'}] {ds.name}: wadoget "
                 f"{ratio:.2f}x curl's throughput (target >= {THROUGHPUT_VS_CURL:g}x)")
    lines.append(f"  [{'ok  ' if medimg.peak < PEAK_RSS_MIB else 'MISS'}] {ds.name}: wadoget "
                 f"peak RSS {medimg.peak:.1f} MiB (target < {PEAK_RSS_MIB:g} MiB)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("60mb", "600mb"))
    args = parser.parse_args()
    try:
        import dicomweb_client  # noqa: F401
    except ImportError:
        raise SystemExit("dicomweb-client is missing: pip install -e '.[bench]'") from None

    with tempfile.TemporaryDirectory(prefix="medimg-bench-") as tmp:
        work = Path(tmp)
        script = work / "dwc_retrieve.py"
        script.write_text(DICOMWEB_CLIENT_SCRIPT)
        print("generating studies ...", file=sys.stderr, flush=True)
        sets = []
        if args.only in (None, "60mb"):
            sets.append(DataSet("60mb", "120 instances 512x512 16-bit",
                                generate_one_study(work / "s60", 1, 120, 512, 512)))
        if args.only in (None, "600mb"):
            # another seed: another study UID (the UID depends on seed and rows only)
            sets.append(DataSet("600mb", "1,200 instances 512x512 16-bit (4 series)",
                                generate_one_study(work / "s600", 4, 300, 512, 512, seed=5679)))
        orthanc = Orthanc.start(work / "orthanc")
        config = work / "medimg.toml"
        config.write_text(orthanc.dicomweb_profile_toml("bench"))
        results: list[tuple[DataSet, list[Bench]]] = []
        try:
            for ds in sets:
                print(f"loading {ds.count} instances ({ds.dataset_bytes / 1e6:.1f} MB) "
                      "into Orthanc ...", file=sys.stderr, flush=True)
                orthanc.load(ds.manifest.paths)
            for ds in sets:
                benches = commands(ds, orthanc, config, script, work)
                measure_fresh(benches, ds.name, args.repeat,
                              lambda b, ds=ds: check_output(b, ds), ENV)
                results.append((ds, benches))
        finally:
            orthanc.stop()

    targets: list[str] = []
    for ds, benches in results:
        targets += report_set(ds, benches)
    print("\nTargets (issue 4):")
    print("\n".join(targets))
    dwc = [(ds.name, next(b for b in benches if b.tool == "dicomweb-client").peak)
           for ds, benches in results]
    print("  dicomweb-client peak RSS by study: "
          + ", ".join(f"{name} {peak:.0f} MiB" for name, peak in dwc))


if __name__ == "__main__":
    main()
