"""Start-up time of `dpcache-bench --help`, `models` and `methods` (wall and CPU seconds, median of N runs);
the target is under 2 s each. Run: python -m benchmarks.bench_startup [-n 3]."""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["models"], ["methods"])


def measure(argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the child) of one `dpcache-bench ARGV` call."""
    exe = Path(sys.executable).with_name("dpcache-bench")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        [str(exe), *argv], check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=3, help="runs per command")
    n = p.parse_args(argv).n
    for cmd in COMMANDS:
        runs = [measure(cmd) for _ in range(n)]
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        flag = "" if wall < 2 else "  (over 2 s)"
        print(f"dpcache-bench {' '.join(cmd):<8} wall {wall:6.2f} s  cpu {cpu:6.2f} s{flag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
