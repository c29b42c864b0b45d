"""Wall-clock cost of an unreachable MLflow server (kept out of the unit tests): the probe and two records.

Run: ``python benchmarks/bench_tracking.py [--repeats 5] [--uri http://127.0.0.1:9]``. Prints the medians of
`reachable(uri)` and of a `Tracker` logging two records to that server (one probe, records kept in JSON lines);
exit 1 when the probe takes longer than its timeout plus a second. tests/test_tracking.py checks the same
path exactly (one probe, with PROBE_TIMEOUT_S), without a clock.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any


def record(budget: int) -> Any:
    """A small dpcache record (the harness is imported lazily, after the arguments are parsed)."""
    from harness.records import ResultRecord

    return ResultRecord.create(
        suite="bench", model="flux-tiny", scale="tiny", method="dpcache", budget=budget, num_steps=10
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--uri", default="http://127.0.0.1:9", help="a tracking URI nothing listens on")
    args = ap.parse_args(argv)

    from harness.tracking import PROBE_TIMEOUT_S, Tracker, reachable

    probe, logged = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        why = reachable(args.uri)
        probe.append(time.perf_counter() - t0)
        if why is None:
            print(f"{args.uri} is reachable: pass a URI nothing listens on", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            tr = Tracker(Path(tmp) / "results.jsonl", mlflow_uri=args.uri)
            tr.log(record(13))
            tr.log(record(9))
            tr.close()
            logged.append(time.perf_counter() - t0)
    p, lg = statistics.median(probe), statistics.median(logged)
    print(f"reachable({args.uri}): median {p:.3f} s (timeout {PROBE_TIMEOUT_S:g} s)")
    print(f"Tracker, two records to an unreachable server: median {lg:.3f} s")
    return 0 if p <= PROBE_TIMEOUT_S + 1 else 1


if __name__ == "__main__":
    sys.exit(main())
