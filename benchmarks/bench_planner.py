"""Time the planner on the released T=50 cost tensors and compare official vs exact path costs.

Run: ``python benchmarks/bench_planner.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from dpcache.cost_tensor import CostTensor
from dpcache.planner import plan, plan_all_budgets

DATA = Path(__file__).parents[1] / "dpcache" / "data" / "official"
TENSORS = {"flux": "flux_dev_T50_cost.safetensors", "wan": "wan21_i2v_T50_cost.safetensors"}


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    tensors = {name: CostTensor.load(DATA / file) for name, file in TENSORS.items()}
    flux = tensors["flux"]
    opts = {"first_full_steps": 3, "last_full_steps": 0}

    print(f"timings on the released FLUX tensor (T=50), median of {args.repeats} runs")
    print(f"{'call':<44} {'ms':>9}")
    rows = [
        ("plan_all_budgets exact (K=6..50, one pass)", lambda: plan_all_budgets(flux, **opts)),
        ("plan_all_budgets official (one pass)", lambda: plan_all_budgets(flux, solver="official", **opts)),
        ("plan exact K=13", lambda: plan(flux, 13, **opts)),
        ("plan official K=13", lambda: plan(flux, 13, solver="official", **opts)),
        ("plan official K=50", lambda: plan(flux, 50, solver="official", **opts)),
    ]
    for label, fn in rows:
        print(f"{label:<44} {median_seconds(fn, args.repeats) * 1e3:>9.2f}")
    each = [lambda k=k: plan(flux, k, solver="official", **opts) for k in range(6, 51)]
    total = median_seconds(lambda: [f() for f in each], max(args.repeats // 2, 3))
    print(f"{'plan official, each K=6..50 separately':<44} {total * 1e3:>9.2f}")

    for name, tensor in tensors.items():
        meta = tensor.meta
        kw = {"first_full_steps": meta.first_full_steps, "last_full_steps": meta.last_full_steps}
        budgets = range(5, 26)
        official = plan_all_budgets(tensor, solver="official", **kw)
        exact = plan_all_budgets(tensor, **kw)
        print(f"\n{name}: path cost, first_full={kw['first_full_steps']} last_full={kw['last_full_steps']}")
        print(f"{'K':>3} {'official':>14} {'exact':>14} {'gain %':>7}  exact key steps (if different)")
        for k in budgets:
            if k not in exact:
                print(f"{k:>3} {'unreachable':>14} {'unreachable':>14}")
                continue
            off = official[k].path_cost if k in official else float("inf")
            ex = exact[k].path_cost
            gain = 100 * (off - ex) / off if off != float("inf") else float("nan")
            differ = (
                ""
                if k in official and official[k].key_steps == exact[k].key_steps
                else str(list(exact[k].key_steps))
            )
            print(f"{k:>3} {off:>14.6g} {ex:>14.6g} {gain:>7.3f}  {differ}")


if __name__ == "__main__":
    main()
