"""Start-up: `medimg --help`, a completion request and `medimg echo` to a local peer.

    .venv/bin/python bench/startup.py [--repeat 10]

Median wall time of whole processes; `medimg echo` is compared with DCMTK's
echoscu against the same Orthanc. Targets (issue 2): --help and completion
under 0.25 s, echo under 0.8 s.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import MEDIMG, Runs, measure, report
from peers import Orthanc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medimg-bench-") as tmp:
        work = Path(tmp)
        orthanc = Orthanc.start(work / "orthanc", dicomweb=False)
        try:
            config = work / "medimg.toml"
            config.write_text(orthanc.profile_toml("local"))
            complete_env = {
                "_MEDIMG_COMPLETE": "complete_bash",
                "COMP_WORDS": "medimg echo ",
                "COMP_CWORD": "2",
                "MEDIMG_CONFIG": str(config),
            }
            echo = Runs("DCMTK echoscu", ["echoscu", "-aec", orthanc.aet, "127.0.0.1",
                                          str(orthanc.port)])
            runs = [
                echo,
                Runs("medimg --help", [MEDIMG, "--help"]),
                Runs("medimg echo", [MEDIMG, "--config", str(config), "echo", "local"]),
            ]
            measure(runs, args.repeat, env={"TCP_NODELAY": "1"})
            completion = [Runs("medimg completion request", [MEDIMG])]
            measure(completion, args.repeat, env=complete_env)
        finally:
            orthanc.stop()
    report("Start-up", [*runs, *completion], "DCMTK echoscu")
    targets = {"medimg --help": 0.25, "medimg completion request": 0.25, "medimg echo": 0.8}
    for r in [*runs, *completion]:
        if r.name in targets:
            verdict = "ok" if r.wall < targets[r.name] else "OVER"
            print(f"{r.name}: {r.wall:.3f} s (target < {targets[r.name]} s) {verdict}")


if __name__ == "__main__":
    main()
