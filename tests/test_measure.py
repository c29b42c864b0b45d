"""Measurement: exact FLOP counts (attention on CPU included), timing statistics, peak memory, speedups.
Timers run on a fake clock here (exact figures); real wall-clock figures are benchmarks/bench_measure.py's."""

from __future__ import annotations

import time

import pytest
import torch

from harness.measure import (
    MemoryResult,
    ModuleTimer,
    RunCost,
    TimingResult,
    attention_flop_formulas,
    count_flops,
    flops_and_result,
    flops_by_module,
    speedups,
    time_call,
)
from harness.metrics import Unavailable


def test_linear_flops_exact():
    layer = torch.nn.Linear(16, 32)
    x = torch.randn(4, 16)
    assert count_flops(lambda: layer(x)) == 2 * 4 * 16 * 32


def test_flops_whole_call_and_per_module():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(3, 8)

    def sample(steps):
        y = x
        for _ in range(steps):
            y = model(y)[:, :1].expand(3, 8).contiguous()
        return y

    per_step = 2 * 3 * 8 * 8 + 2 * 3 * 8 * 2
    assert count_flops(lambda: sample(5)) == 5 * per_step
    assert count_flops(lambda: sample(10)) / count_flops(lambda: sample(5)) == 2.0
    assert flops_by_module(lambda: sample(1))["Global"] == per_step


class FakeClock:
    """`time.perf_counter` that moves only when told: timers measured on it give exact figures."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(time, "perf_counter", fake)
    return fake


def test_time_call_warmup_repeats_median(clock):
    durations = iter([8.0, 8.0, 0.5, 0.25, 2.0, 1.0, 4.0])  # two warm-up calls, then five timed

    def fn():
        clock.advance(next(durations))

    r = time_call(fn, warmup=2, repeats=5)
    assert r.samples == (0.5, 0.25, 2.0, 1.0, 4.0) and r.timer == "perf_counter"  # warm-ups not timed
    assert r.median == 1.0 and r.iqr == 1.5 and next(durations, None) is None
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_call(fn, repeats=0)


def test_timing_stats():
    r = TimingResult((1.0, 2.0, 3.0, 4.0, 100.0), "perf_counter")
    assert r.median == 3.0 and r.iqr == 2.0 and r.to_dict()["samples"][-1] == 100.0


_PEAK_PROBE = """
import json, torch
from harness.measure import Unavailable, peak_memory
r = peak_memory(lambda: float(torch.ones(64 * 1024 * 1024 // 4).sum()))  # 64 MiB
print(json.dumps({"reason": r.reason} if isinstance(r, Unavailable) else {"kind": r.kind, "over": r.overhead_bytes}))
"""


def test_peak_memory_cpu_sees_torch_allocations():
    # In a fresh process: in a long-lived xdist worker that once held GBs, the allocator can serve 64 MiB
    # from pages already resident, and the RSS high-water mark then (rightly) does not move.
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_PROBE], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if "reason" in r:
        assert "clear_refs" in r["reason"] or "VmHWM" in r["reason"]
    else:
        assert r["kind"] == "rss-high-water" and r["over"] > 48 * 1024 * 1024


def test_speedups():
    full = RunCost(
        flops=1000, timing=TimingResult((2.0,) * 5, "perf_counter"), memory=MemoryResult(100, 0, "x")
    )
    meth = RunCost(
        flops=250, timing=TimingResult((0.5,) * 5, "perf_counter"), memory=MemoryResult(130, 0, "x")
    )
    s = speedups(full, meth)
    assert s.flops_speedup == 4.0 and s.wall_speedup == 4.0 and s.mem_overhead_bytes == 30
    assert s.wall_speedup_samples == (4.0,) * 5
    none = speedups(RunCost(flops=1000), RunCost(flops=500))
    assert none.flops_speedup == 2.0 and isinstance(none.wall_speedup, Unavailable)


class _Slow(torch.nn.Linear):
    """A linear layer whose forward takes 0.25 s on the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(4, 4)
        self.clock = clock

    def forward(self, x):
        self.clock.advance(0.25)
        return super().forward(x)


def test_flops_and_result_and_module_timer(clock):
    inner = _Slow(clock)

    def pipeline():
        clock.advance(16.0)  # work outside the transformer
        for _ in range(3):
            inner(torch.ones(1, 4))
            clock.advance(2.0)  # between its forwards
        return "image"

    flops, out = flops_and_result(pipeline)
    assert out == "image" and flops == 3 * 2 * 4 * 4
    with ModuleTimer(inner) as t:
        pipeline()
    assert t.calls == 3 and t.seconds == 0.75  # only the three forwards, nothing outside them
    pipeline()
    assert t.calls == 3 and t.seconds == 0.75  # hooks removed on exit


def _sdpa_flops(q, k, v, backend=None, backward=False, **kw):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def call():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)
        if backward:
            out.sum().backward()

    if backend is None:
        return count_flops(call)
    with sdpa_kernel(getattr(SDPBackend, backend)):
        return count_flops(call)


ATTENTION_CASES = {
    "plain": ((2, 4, 24, 16), (2, 4, 40, 16), {}),
    "mask": ((2, 4, 24, 16), (2, 4, 40, 16), {"attn_mask": "bool"}),
    "float-mask": ((1, 2, 24, 8), (1, 2, 24, 8), {"attn_mask": "float"}),
    "causal": ((1, 2, 24, 8), (1, 2, 24, 8), {"is_causal": True}),
    "gqa": ((2, 8, 24, 16), (2, 2, 40, 16), {"enable_gqa": True}),
}


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_sdpa_cpu_flops_equal_math_backend(case):
    qs, ks, kw = ATTENTION_CASES[case]
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(qs, generator=g), torch.randn(ks, generator=g)
    v = torch.randn(ks, generator=g)
    if kw.get("attn_mask") == "bool":
        kw = {"attn_mask": torch.rand(qs[0], 1, qs[2], ks[2], generator=g) > 0.3}
    elif kw.get("attn_mask") == "float":
        kw = {"attn_mask": torch.randn(qs[0], 1, qs[2], ks[2], generator=g)}
    b, h, s_q, d = qs
    expected = 2 * (2 * b * h * s_q * ks[2] * d)  # q @ kᵀ and p @ v, every query head (GQA included)
    assert _sdpa_flops(q, k, v, "MATH", **kw) == expected  # the math backend: its bmm are counted
    assert _sdpa_flops(q, k, v, **kw) == expected  # the default CPU kernel (flash for CPU) the same


def test_sdpa_cpu_kernel_is_the_one_counted():
    """The default CPU path really runs the fused kernel (else the test above compares math with math)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func._overloadpacket)
            return func(*args, **(kwargs or {}))

    q = torch.randn(1, 2, 8, 8)
    with Ops():
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    assert fused in seen and fused in attention_flop_formulas()
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as plain:  # torch alone: attention is 0
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert (
        plain.get_total_flops() == 0
        and count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) > 0
    )


def test_sdpa_cpu_backward_counted_like_the_cuda_kernels():
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    shape = (2, 4, 16, 8)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    fwd, bwd = sdpa_flop_count(shape, shape, shape), sdpa_backward_flop_count(shape, shape, shape, shape)
    assert bwd > 0 and _sdpa_flops(q, k, v, backward=True) == fwd + bwd


@pytest.mark.parametrize("model", ["flux-tiny", "dit-tiny"])
def test_tiny_transformer_forward_flops_equal_math_backend(model):
    """One transformer forward of a trained tiny model (its inputs captured from a 1-step sample): the CPU
    count equals the math-backend count, and attention is a real share of it (it counted as zero before)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from harness.zoo.registry import availability, get_spec, load_pipeline

    spec = get_spec(model)
    ok, why = availability(spec)
    assert ok, why  # the tiny weights are committed
    pipe = load_pipeline(spec)
    kw = spec.pipeline_kwargs(spec.evaluation_prompts[0], 1)
    kw.pop("num_inference_steps", None)
    captured = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda _m, args, kwargs: captured.append((args, kwargs)), with_kwargs=True
    )
    try:
        pipe(num_inference_steps=1, output_type="pt", **kw)
    finally:
        hook.remove()
    args, kwargs = captured[0]

    def forward():
        with torch.no_grad():
            return pipe.transformer(*args, **kwargs)

    cpu = count_flops(forward)
    with sdpa_kernel(SDPBackend.MATH):
        math = count_flops(forward)
    with FlopCounterMode(display=False) as torch_alone:
        forward()
    assert cpu == math > 0
    share = 1 - torch_alone.get_total_flops() / cpu
    assert 0.05 < share < 0.3, (cpu, torch_alone.get_total_flops())  # flux-tiny 12.0 %, dit-tiny 9.8 %
