"""Runtime benchmark: wall-clock vs FLOPs speedup of DPCache, and calibration peak memory, on CPU.

    python benchmarks/bench_runtime.py [--model flux|wan|hunyuan-video|dit] [--size medium] [--budget 13]

Wall-clock figures are medians of interleaved repeats (full and cached alternate, so drift hits both);
FLOPs are exact (torch.utils.flop_counter). Peak memory is each child process's RSS high-water mark.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(model: str, size: str):
    """(pipeline, call(num_steps) -> output) for a zoo pipeline at the given size."""
    import torch

    if model == "flux":
        from harness.zoo import flux_tiny as m

        pipe = m.build_pipeline(seed=0, size=size)
        kw = m.call_kwargs("a red 7 on a black background", size=size)
    elif model == "dit":
        from harness.zoo import dit_tiny as m

        pipe = m.build_pipeline(seed=0, size=size)
        kw = {**m.call_kwargs(7), "output_type": "np"}
    else:
        from harness.zoo import hunyuan_tiny, wan_tiny

        m = wan_tiny if model == "wan" else hunyuan_tiny
        pipe = m.build_pipeline(seed=0, size=size)
        kw = {**m.default_call_kwargs(size), "prompt": "a green 4 moving left"}
        kw.pop("num_inference_steps", None)
    pipe.set_progress_bar_config(disable=True)
    for c in pipe.components.values():
        if isinstance(c, torch.nn.Module):
            c.eval()

    def call(steps: int):
        with torch.inference_mode():
            return pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **kw)

    return pipe, call


def uniform_schedule(T: int, K: int, first: int = 3) -> list[int]:
    import numpy as np

    rest = np.linspace(first, T - 1, K - first + 1)[:-1].round().astype(int).tolist()
    return sorted(set(range(first)) | set(rest))[:K] if first < K else list(range(K))


def flops_of(call, steps: int, transformer_class: str) -> tuple[int, int]:
    """(whole-call FLOPs, FLOPs inside the transformer)."""
    from harness.measure import flop_counter

    with flop_counter() as counter:  # attention counted on CPU too
        call(steps)
    inside = sum(counter.get_flop_counts().get(transformer_class, {}).values())
    return counter.get_total_flops(), inside


class TransformerTimer:
    """Wall time of every transformer forward (transformer-only time, and per-call key vs skipped)."""

    def __init__(self, transformer):
        self.calls: list[float] = []
        self._start = 0.0
        self._handles = [
            transformer.register_forward_pre_hook(self._pre),
            transformer.register_forward_hook(self._post),
        ]

    def _pre(self, *args):
        self._start = time.perf_counter()

    def _post(self, *args):
        self.calls.append(time.perf_counter() - self._start)

    def take(self) -> list[float]:
        out, self.calls = self.calls, []
        return out


def speed(args) -> dict:
    import torch

    from dpcache import DPCacheConfig, apply_dpcache, dpcache_stats, remove_dpcache
    from dpcache.planner import plan

    torch.set_num_threads(args.threads)
    pipe, call = build(args.model, args.size)
    T, K = args.steps, args.budget
    if args.cost:
        schedule = list(plan(args.cost_tensor, K, first_full_steps=3).key_steps)
    else:
        schedule = uniform_schedule(T, K)
    cfg = DPCacheConfig(num_inference_steps=T, schedule=schedule)
    cls = type(pipe.transformer).__name__
    full_flops, full_tr_flops = flops_of(call, T, cls)
    apply_dpcache(pipe, cfg)
    cached_flops, cached_tr_flops = flops_of(call, T, cls)
    hits = {k: v.cache_hits for k, v in dpcache_stats(pipe).items()}
    remove_dpcache(pipe)
    call(T)  # warm-up
    timer = TransformerTimer(pipe.transformer)
    full_t, cached_t, full_tr, cached_tr = [], [], [], []
    full_calls, key_calls, skip_calls = [], [], []
    branches = None
    for _ in range(args.repeats):
        timer.take()
        start = time.perf_counter()
        call(T)
        full_t.append(time.perf_counter() - start)
        calls = timer.take()
        full_tr.append(sum(calls))
        full_calls += calls
        branches = len(calls) // T
        apply_dpcache(pipe, cfg)
        start = time.perf_counter()
        call(T)
        cached_t.append(time.perf_counter() - start)
        calls = timer.take()
        cached_tr.append(sum(calls))
        for i, t in enumerate(calls):
            (key_calls if i // branches in schedule else skip_calls).append(t)
        remove_dpcache(pipe)
    flops_speedup = full_flops / cached_flops
    wall_speedup = statistics.median(full_t) / statistics.median(cached_t)
    out = {
        "model": f"{args.model}-{args.size}",
        "T": T,
        "K": K,
        "schedule": schedule,
        "cache_hits": hits,
        "full_s_median": statistics.median(full_t),
        "cached_s_median": statistics.median(cached_t),
        "full_s": full_t,
        "cached_s": cached_t,
        "full_gflops": full_flops / 1e9,
        "cached_gflops": cached_flops / 1e9,
        "flops_speedup": flops_speedup,
        "wall_speedup": wall_speedup,
        "wall_over_flops": wall_speedup / flops_speedup,
        "ideal_speedup": T / K,
        "transformer_flops_speedup": full_tr_flops / cached_tr_flops,
        "transformer_wall_speedup": statistics.median(full_tr) / statistics.median(cached_tr),
        "transformer_full_s": full_tr,
        "transformer_cached_s": cached_tr,
        # per-call decomposition: less sensitive to drift between whole runs than the ratio of medians
        "full_call_ms_mean": 1e3 * statistics.mean(full_calls),
        "key_call_ms_mean": 1e3 * statistics.mean(key_calls),
        "skipped_call_ms_mean": 1e3 * statistics.mean(skip_calls),
    }
    per_call = (T * statistics.mean(full_calls)) / (
        K * statistics.mean(key_calls) + (T - K) * statistics.mean(skip_calls)
    )
    out["transformer_wall_speedup_per_call"] = per_call
    out["per_call_over_flops"] = per_call / out["transformer_flops_speedup"]
    return out


def _child_peak(mode: str, args) -> int:
    """Run one full-step sample ('plain') or one calibration prompt ('calibrate') in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--model",
        args.model,
        "--size",
        args.size,
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def child(mode: str, args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    pipe, call = build(args.model, args.size)
    if mode == "plain":
        call(args.steps)
    else:
        from dpcache.calibration import record_features
        from dpcache.pact import cost_tensor_one
        from dpcache.predictors import TaylorPredictor

        feats = record_features(pipe, lambda: call(args.steps))
        cost_tensor_one(feats, TaylorPredictor(order=2))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="flux", choices=["flux", "wan", "hunyuan-video", "dit"])
    ap.add_argument("--size", default="medium", choices=["tiny", "medium"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--budget", type=int, default=13)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cost", default=None, help="plan the schedule from this cost tensor (default: uniform)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args)
        return
    bundled = os.path.join(
        os.path.dirname(__file__), "..", "dpcache", "data", "official", "flux_dev_T50_cost.safetensors"
    )
    if args.cost is None and args.steps == 50:
        args.cost = bundled  # the released FLUX.1-dev tensor: the paper's schedule shape
    if args.cost:
        from dpcache import CostTensor

        args.cost_tensor = CostTensor.load(args.cost)
    result = speed(args)
    if not args.skip_memory:
        plain, cal = _child_peak("plain", args), _child_peak("calibrate", args)
        result.update(
            peak_rss_plain_mb=plain / 2**20,
            peak_rss_calibrate_mb=cal / 2**20,
            calibrate_over_plain=cal / plain,
        )
    print(json.dumps(result, indent=2))
    print(
        f"\n{result['model']} T={result['T']} K={result['K']}: flops speedup {result['flops_speedup']:.2f}x, "
        f"wall speedup {result['wall_speedup']:.2f}x (median {result['full_s_median']:.2f}s -> "
        f"{result['cached_s_median']:.2f}s), wall/flops {result['wall_over_flops']:.1%}; transformer only: "
        f"flops {result['transformer_flops_speedup']:.2f}x, wall {result['transformer_wall_speedup']:.2f}x, "
        f"per call {result['transformer_wall_speedup_per_call']:.2f}x = {result['per_call_over_flops']:.1%} of flops "
        f"(key {result['key_call_ms_mean']:.1f} ms, skipped {result['skipped_call_ms_mean']:.2f} ms, "
        f"uncached {result['full_call_ms_mean']:.1f} ms)"
        + (
            f", calibration peak RSS {result['calibrate_over_plain']:.1%} of plain"
            if not args.skip_memory
            else ""
        )
    )


if __name__ == "__main__":
    main()
