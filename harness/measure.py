"""Speed measurement: FLOPs of a whole call (torch.utils.flop_counter, attention counted on every device),
wall-clock with warm-up and repeats (CUDA events on GPU), peak memory, and the speedups of a method."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.metrics import Unavailable


def _sdpa_forward(query_shape: Any, key_shape: Any, value_shape: Any, *_: Any, **__: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


def _sdpa_backward(
    grad_out: Any, query_shape: Any, key_shape: Any, value_shape: Any, *_: Any, **__: Any
) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return int(sdpa_backward_flop_count(grad_out, query_shape, key_shape, value_shape))


# SDPA kernels torch's flop_counter has no formula for (so attention counted 0 on CPU): the CPU flash kernel,
# MPS's math kernel and the out-of-tree "overrideable" backend. Same formulas as torch's CUDA flash /
# efficient / cuDNN kernels (2 bmm forward; GQA = query heads; a mask or is_causal changes no count), which
# is also what the math backend counts through its bmm decomposition.
_ATTENTION_FORWARD = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_fused_attention_overrideable",
)
_ATTENTION_BACKWARD = (
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward",
)


def attention_flop_formulas() -> dict[Any, Callable[..., int]]:
    """`{aten op: formula over shapes}` for the attention kernels `torch.utils.flop_counter` misses (only the
    ops this torch build has); pass as `FlopCounterMode(custom_mapping=...)`."""
    import torch

    aten = torch.ops.aten
    out: dict[Any, Callable[..., int]] = {}
    for names, formula in ((_ATTENTION_FORWARD, _sdpa_forward), (_ATTENTION_BACKWARD, _sdpa_backward)):
        for name in names:
            if hasattr(aten, name):
                out[getattr(aten, name)] = formula
    return out


def flop_counter(depth: int | None = None) -> Any:
    """A silent `FlopCounterMode` that counts attention on every device (CPU flash kernel included). For the
    many transformer calls of budget searches and evaluation, `harness.flops.function_flop_counter` gives
    the same total with much less overhead."""
    from torch.utils.flop_counter import FlopCounterMode

    kw: dict[str, Any] = {"depth": depth} if depth is not None else {}
    return FlopCounterMode(display=False, custom_mapping=attention_flop_formulas(), **kw)


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of everything `fn()` runs (all modules, probe work included), counted by
    `FlopCounterMode` with attention on every device — deterministic, independent of the device's speed."""
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


def flops_and_result(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Like `count_flops`, also returning `fn()`'s result (one sampling run yields output and FLOPs)."""
    with flop_counter() as counter:
        out = fn()
    return int(counter.get_total_flops()), out


def flops_by_module(fn: Callable[[], Any], depth: int = 2) -> dict[str, int]:
    """FLOPs per module (up to `depth` levels, 'Global' = total) for reports."""
    with flop_counter(depth=depth) as counter:
        fn()
    return {mod: int(sum(ops.values())) for mod, ops in counter.get_flop_counts().items()}


@dataclass(frozen=True)
class TimingResult:
    """Wall-clock seconds of `repeats` timed calls after warm-up: median and spread (IQR)."""

    samples: tuple[float, ...]
    timer: str  # "cuda-events" | "perf_counter"

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def iqr(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return float(q[2] - q[0])

    @property
    def spread(self) -> float:
        """IQR relative to the median."""
        return self.iqr / self.median if self.median > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "iqr": self.iqr, "samples": list(self.samples), "timer": self.timer}


def _use_cuda(device: Any) -> bool:
    import torch

    if device is None:
        return torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.device(device).type == "cuda"


def time_call(
    fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, device: Any = None
) -> TimingResult:
    """Run `fn` `warmup` times untimed, then `repeats` times timed. On CUDA (explicit `device`, or CUDA
    already initialised) with CUDA events and a synchronise; on CPU with `time.perf_counter`."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    if _use_cuda(device):
        import torch

        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / 1000.0)
        return TimingResult(tuple(samples), "cuda-events")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return TimingResult(tuple(samples), "perf_counter")


@dataclass(frozen=True)
class MemoryResult:
    """Peak memory of one call: the peak, the level before it, and the overhead (peak − before)."""

    peak_bytes: int
    baseline_bytes: int
    kind: str  # "cuda-max-allocated" | "rss-high-water"

    @property
    def overhead_bytes(self) -> int:
        return max(0, self.peak_bytes - self.baseline_bytes)


def _proc_status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_high_water() -> bool:
    """Reset the kernel's VmHWM for this process (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any], *, device: Any = None) -> MemoryResult | Unavailable:
    """Peak memory of `fn()`: CUDA max-allocated on GPU; on CPU the process RSS high-water mark (reset
    before the call via /proc/self/clear_refs), or Unavailable where that cannot be reset."""
    if _use_cuda(device):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return MemoryResult(int(torch.cuda.max_memory_allocated()), int(before), "cuda-max-allocated")
    before_kb = _proc_status_kb("VmRSS")
    if before_kb is None or not _reset_rss_high_water():
        fn()
        return Unavailable(
            "CPU peak memory needs Linux /proc/self/clear_refs to reset the RSS high-water mark", "peak_mem"
        )
    fn()
    peak_kb = _proc_status_kb("VmHWM")
    if peak_kb is None:
        return Unavailable("VmHWM not readable from /proc/self/status", "peak_mem")
    return MemoryResult(peak_kb * 1024, before_kb * 1024, "rss-high-water")


@dataclass(frozen=True)
class RunCost:
    """What one sampling configuration cost: FLOPs, wall-clock and peak memory (each optional)."""

    flops: int | None = None
    timing: TimingResult | None = None
    memory: MemoryResult | Unavailable | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Speedups:
    """Full-step cost over method cost; `mem_overhead_bytes` = method peak − full peak."""

    flops_speedup: float | Unavailable
    wall_speedup: float | Unavailable
    wall_speedup_samples: tuple[float, ...] = ()
    mem_overhead_bytes: int | Unavailable | None = None


def speedups(full: RunCost, method: RunCost) -> Speedups:
    """`flops_speedup` = full FLOPs / method FLOPs; `wall_speedup` = full median / method median
    (plus per-repeat ratios for noise-aware gates); memory overhead when both peaks are known."""
    if full.flops and method.flops:
        fs: float | Unavailable = full.flops / method.flops
    else:
        fs = Unavailable("FLOPs not counted for both runs", "flops_speedup")
    if full.timing and method.timing and method.timing.median > 0:
        ws: float | Unavailable = full.timing.median / method.timing.median
        ft, mt = sorted(full.timing.samples), sorted(method.timing.samples)
        ratios = tuple(a / b for a, b in zip(ft, mt) if b > 0)
    else:
        ws, ratios = Unavailable("wall-clock not timed for both runs", "wall_speedup"), ()
    mem: int | Unavailable | None = None
    if isinstance(full.memory, MemoryResult) and isinstance(method.memory, MemoryResult):
        mem = method.memory.peak_bytes - full.memory.peak_bytes
    elif isinstance(method.memory, Unavailable):
        mem = method.memory
    return Speedups(fs, ws, ratios, mem)


class ModuleTimer:
    """Accumulates the wall-clock time spent inside one module's forward (e.g. the transformer) while
    a whole pipeline call runs, so transformer-only and whole-pipeline time can both be reported.
    Synchronises CUDA around each forward when the module runs on CUDA.

        with ModuleTimer(pipe.transformer) as t:
            pipe(...)
        t.seconds, t.calls
    """

    def __init__(self, module: Any) -> None:
        self.module = module
        self.seconds = 0.0
        self.calls = 0
        self._t0: float | None = None
        self._handles: list[Any] = []

    def _sync(self) -> None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def _pre(self, *_: Any, **__: Any) -> None:
        if self._t0 is None:  # re-entrant forwards (a module calling itself) count once
            self._sync()
            self._t0 = time.perf_counter()

    def _post(self, *_: Any, **__: Any) -> None:
        if self._t0 is not None:
            self._sync()
            self.seconds += time.perf_counter() - self._t0
            self.calls += 1
            self._t0 = None

    def __enter__(self) -> ModuleTimer:
        self._handles = [
            self.module.register_forward_pre_hook(self._pre),
            self.module.register_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
