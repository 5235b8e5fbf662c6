"""
Instructions per job of the dispatcher and of the reference, counted by
valgrind's callgrind: a figure that a busy machine does not move, for telling
whether a change made the path of a job shorter.

Each side runs under callgrind, started as C{make bench} starts it, passes
some jobs to warm up, then the counters are zeroed, C{--jobs} jobs of
duration 0 pass at C{--prefetch}, and the counters are read.  Running under
valgrind is about fifty times slower, so only the counts mean anything, not
the times.  System calls are not counted (see C{strace -c} for those).

Needs valgrind (C{callgrind_control} on the path) and RabbitMQ on
127.0.0.1:5672.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from run import (
    Publisher,
    Queues,
    dispatcher_subject,
    progress,
    reference_subject,
    throughput,
)
from vss_standin import StandIn

SIDES = {"dispatcher": dispatcher_subject, "reference": reference_subject}


def count(side: str, jobs: int, warm_up: int, prefetch: int, work: Path) -> float:
    """
    Instructions per job of one side, in thousands.
    """
    standin = StandIn()
    standin.start()
    publisher = Publisher()
    queues = Queues.unique(f"{side}-instructions")
    publisher.declare(queues.normal, queues.priority, queues.dead)
    subject = SIDES[side](side, queues, prefetch, standin, work)
    out = work / f"{side}.callgrind"
    subject.argv = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        *subject.argv,
    ]
    try:
        subject.start(timeout=300)
        throughput(subject, publisher, standin, queues.normal, warm_up, "warm")
        assert subject.process is not None
        pid = str(subject.process.pid)
        subprocess.run(
            ["callgrind_control", "--zero", pid], check=True, capture_output=True
        )
        throughput(subject, publisher, standin, queues.normal, jobs, "counted")
        subprocess.run(
            ["callgrind_control", "--dump=counted", pid],
            check=True,
            capture_output=True,
        )
    finally:
        subject.stop()
        publisher.delete_declared()
        publisher.close()
        standin.stop()
    for dump in sorted(work.glob(f"{side}.callgrind*")):
        text = dump.read_text(errors="replace")
        if "counted" not in text[:2000]:
            continue
        for line in text.splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]) / jobs / 1000
    raise RuntimeError(f"callgrind wrote no counts for the {side}")


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs counted")
    parser.add_argument("--warm-up", type=int, default=300, help="jobs not counted")
    parser.add_argument("--prefetch", type=int, default=20)
    options = parser.parse_args(arguments)
    if shutil.which("callgrind_control") is None:
        progress("valgrind is not installed (apt-get install valgrind)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="vss-instructions-"))
    try:
        found = {}
        for side in SIDES:
            progress(f"{side}: {options.warm_up} jobs, then {options.jobs} counted")
            found[side] = count(
                side, options.jobs, options.warm_up, options.prefetch, work
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dispatcher, reference = found["dispatcher"], found["reference"]
    print(f"instructions per job at prefetch {options.prefetch} (thousands):")
    print(f"  dispatcher {dispatcher:,.1f}")
    print(f"  reference  {reference:,.1f}")
    print(f"  ratio      {dispatcher / reference:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
