"""Shared benchmark machinery: run whole processes, measure wall time and peak RSS."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the test suite's peers and data generators
if TYPE_CHECKING:
    from dicom_data import Manifest

BIN = Path(sys.executable).parent
MEDIMG = str(BIN / "medimg")


@dataclass
class Runs:
    """Repeated runs of one command: wall seconds and peak RSS (MiB) of each."""

    name: str
    argv: Sequence[str]
    walls: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def peak(self) -> float:
        return statistics.median(self.rss)


# GNU time reports the child's own peak RSS; a child forked from this Python
# process would otherwise be charged with the parent's pages it inherited.
GNU_TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None


def run_once(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run argv to completion (stdout discarded); return (wall seconds, peak RSS MiB)."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss_file:
        wrapped = [GNU_TIME, "-q", "-f", "%M", "-o", rss_file.name, *argv] if GNU_TIME else argv
        started = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        peak_kib = float(rss_file.read().strip() or 0) if GNU_TIME else usage.ru_maxrss
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {tail}")
    return wall, peak_kib / 1024


def measure(runs: Sequence[Runs], repeat: int = 3, env: dict[str, str] | None = None) -> None:
    """Run every command `repeat` times, interleaved so that noise hits all alike."""
    for _ in range(repeat):
        for r in runs:
            wall, rss = run_once(r.argv, env)
            r.walls.append(wall)
            r.rss.append(rss)


def report(title: str, runs: Sequence[Runs], baseline: str) -> None:
    """Print medians and ratios to the baseline (wall time / baseline's wall time)."""
    base = next(r for r in runs if r.name == baseline)
    print(f"\n{title}  (median of {len(base.walls)}; ratio = wall / {baseline})")
    print(f"{'command':<34} {'wall s':>8} {'ratio':>7} {'peak RSS MiB':>13}")
    for r in runs:
        print(f"{r.name:<34} {r.wall:>8.3f} {r.wall / base.wall:>6.2f}x {r.peak:>13.1f}")


@dataclass
class DataSet:
    """A generated one-study data set a benchmark retrieves."""

    name: str
    title: str
    manifest: Manifest

    @property
    def study_uid(self) -> str:
        return str(self.manifest.studies[0].study_uid)

    @property
    def count(self) -> int:
        return len(self.manifest.instances)

    @cached_property
    def dataset_bytes(self) -> int:
        return sum(i.path.stat().st_size for i in self.manifest.instances)


@dataclass
class OutputRuns(Runs):
    """A command and the directory it writes into (emptied before each run)."""

    out: Path = Path()


def fresh(out: Path) -> None:
    """An empty output directory."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)


def measure_fresh(benches: Sequence[OutputRuns], label: str, repeat: int,
                  check: Callable[[OutputRuns], None], env: dict[str, str]) -> None:
    """Like `measure`, but each run starts in an empty directory and `check` verifies it."""
    for i in range(repeat):
        for b in benches:
            fresh(b.out)
            wall, rss = run_once(b.argv, env)
            check(b)
            b.walls.append(wall)
            b.rss.append(rss)
            print(f"  [{label} {i + 1}/{repeat}] {b.name:<34} {wall:7.3f} s {rss:7.1f} MiB",
                  file=sys.stderr, flush=True)
            shutil.rmtree(b.out, ignore_errors=True)
