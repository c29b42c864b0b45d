"""Timing checks of harness.measure (kept out of the unit tests) and per-step FLOPs / time of the tiny models.

Run: ``python benchmarks/bench_measure.py [timers] [models [NAME ...]]``. `timers` checks that `time_call`
measures a 2 ms sleep as 2 ms and that `ModuleTimer` leaves out work outside the module (exit 1 otherwise);
`models` prints, per tiny model, transformer FLOPs per step without and with the attention formulas, the
attention share and the wall-clock per step (transformer and whole pipeline) — the figures docs/nightly.md uses.
"""

from __future__ import annotations

import json
import sys
import time

TINY = ("flux-tiny", "dit-tiny", "wan-tiny", "hunyuan-video-tiny")


def timers(repeats: int = 5) -> list[str]:
    """Print the timers' real figures (medians over `repeats`); return the bounds that fail (empty: ok).
    The unit tests check the same timers exactly on a fake clock (tests/test_measure.py)."""
    import statistics

    import torch

    from harness.measure import ModuleTimer, time_call

    bad = []
    r = time_call(lambda: time.sleep(0.002), warmup=1, repeats=repeats)
    print(f"time_call, 2 ms sleep: median {r.median * 1e3:.3f} ms, iqr {r.iqr * 1e3:.3f} ms")
    if not 0.0015 < r.median < 0.1:
        bad.append(f"time_call median of a 2 ms sleep = {r.median:.4f} s")
    inner = torch.nn.Linear(4, 4)

    def pipeline() -> None:
        time.sleep(0.02)
        for _ in range(3):
            inner(torch.ones(1, 4))

    counted = []
    for _ in range(repeats):
        with ModuleTimer(inner) as t:
            pipeline()
        counted.append(t.seconds)
    median = statistics.median(counted)
    print(f"ModuleTimer, 3 small forwards after a 20 ms sleep: median {median * 1e3:.3f} ms")
    if not 0 < median < 0.02:
        bad.append(f"ModuleTimer counted {median:.4f} s for 3 small forwards after a 20 ms sleep")
    return bad


def model_costs(name: str, steps: int = 4) -> dict[str, float]:
    """Transformer FLOPs per step (torch alone / with attention), attention share and seconds per step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.measure import ModuleTimer, attention_flop_formulas
    from harness.zoo.registry import get_spec, load_pipeline

    torch.set_num_threads(1)
    spec = get_spec(name)
    pipe = load_pipeline(spec)
    kw = spec.pipeline_kwargs(spec.evaluation_prompts[0], steps)
    kw.pop("num_inference_steps", None)

    def call() -> None:
        pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt", **kw)

    call()  # warm-up
    tr, orig = pipe.transformer, pipe.transformer.forward
    tot = {"before": 0, "after": 0}

    def counted(*a, **k):
        with FlopCounterMode(display=False) as before:
            orig(*a, **k)
        with FlopCounterMode(display=False, custom_mapping=attention_flop_formulas()) as after:
            out = orig(*a, **k)
        tot["before"] += before.get_total_flops()
        tot["after"] += after.get_total_flops()
        return out

    tr.forward = counted
    try:
        call()
    finally:
        tr.forward = orig
    with ModuleTimer(tr) as t:
        t0 = time.perf_counter()
        call()
        wall = time.perf_counter() - t0
    return {
        "flops_per_step_before": tot["before"] / steps,
        "flops_per_step_after": tot["after"] / steps,
        "attention_share": 1 - tot["before"] / tot["after"],
        "transformer_s_per_step": t.seconds / steps,
        "pipeline_s_per_step": wall / steps,
    }


def main(argv: list[str]) -> int:
    what = argv or ["timers", "models"]
    if "timers" in what:
        bad = timers()
        print("timers:", "ok" if not bad else "; ".join(bad))
        if bad:
            return 1
    if "models" in what:
        names = [a for a in what if a not in ("timers", "models")] or list(TINY)
        for name in names:
            print(name, json.dumps({k: round(v, 4) for k, v in model_costs(name).items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
