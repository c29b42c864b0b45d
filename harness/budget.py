"""Budget matching: search a cache method's knob so its measured compute lands on K full computations (±5%)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from dpcache.errors import InputFileError
from harness.gates import write_json_atomic
from harness.knob_search import KnobSearch, knob_search

DEFAULT_TOLERANCE = 0.05
FORMAT_VERSION = 2  # 2: `limit` in the unreachable message; cache keys carry the knob signature


@dataclass(frozen=True)
class BudgetMatch:
    """Outcome of a knob search: the knob value whose measured compute is closest to `budget`.

    `reachable` is True when `|measured - budget| <= tol * budget`; otherwise `nearest` lists the
    budgets the method can hit on either side (knob value, measured compute), and `message` says so.
    """

    method: str
    budget: float
    knob: str
    value: float | None
    measured: float | None
    reachable: bool
    tol: float = DEFAULT_TOLERANCE
    evaluations: list[tuple[float, float]] = field(default_factory=list)
    nearest: list[tuple[float, float]] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BudgetMatch:
        data = {k: v for k, v in data.items() if k != "format"}
        data["evaluations"] = [tuple(e) for e in data.get("evaluations", [])]
        data["nearest"] = [tuple(e) for e in data.get("nearest", [])]
        return cls(**data)


def _within(measured: float, budget: float, tol: float) -> bool:
    return abs(measured - budget) <= tol * budget


def _finish(
    method: str, budget: float, knob: str, evals: dict[float, float], tol: float, limit: str = ""
) -> BudgetMatch:
    pairs = sorted(evals.items())
    best_v, best_m = min(pairs, key=lambda p: (abs(p[1] - budget), p[0]))
    if _within(best_m, budget, tol):
        return BudgetMatch(method, budget, knob, best_v, best_m, True, tol, pairs)
    below = [p for p in pairs if p[1] < budget]
    above = [p for p in pairs if p[1] > budget]
    nearest = []
    if below:
        nearest.append(max(below, key=lambda p: p[1]))
    if above:
        nearest.append(min(above, key=lambda p: p[1]))
    if below and above:
        hit = ", ".join(f"K={m:.3g} at {knob}={v:.6g}" for v, m in nearest)
        msg = (
            f"{method} cannot reach budget K={budget:g} within {tol:.0%}: the nearest budgets it can hit are "
            f"{hit} (measured compute over {len(pairs)} knob values)"
        )
    else:  # the budget lies beyond everything the whole knob range reaches: the method's own bound
        (v, m), side = nearest[0], ("least" if above else "most")
        msg = (
            f"{method} cannot reach budget K={budget:g} within {tol:.0%}: the nearest budgets it can hit are K={m:.3g} "
            f"at {knob}={v:.6g}, the {side} compute its whole knob range reaches (measured compute over {len(pairs)} "
            f"knob values)"
        )
        if limit:
            msg += f" — {limit}"
    return BudgetMatch(method, budget, knob, best_v, best_m, False, tol, pairs, nearest, msg)


def _warp(scale: float | None) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """(to, back): the coordinate bisection halves. Linear, or `asinh(v / scale)` — linear below `scale`,
    logarithmic above it — so one range can span a threshold's useful values and its saturation (1e3 …)."""
    if scale is None:
        return (lambda v: v), (lambda u: u)
    s = float(scale)
    if not s > 0:
        raise ValueError(f"knob_scale must be positive, got {scale}")
    return (lambda v: math.asinh(v / s)), (lambda u: s * math.sinh(u))


def search_knob(
    measure: Callable[[float], float],
    budget: float,
    *,
    method: str = "method",
    knob: str = "knob",
    knob_range: tuple[float, float] | None = None,
    knob_values: Sequence[float] | None = None,
    compute_grows_with_knob: bool = False,
    tol: float = DEFAULT_TOLERANCE,
    max_evals: int = 16,
    knob_scale: float | None = None,
    monotone: bool = True,
    limit: str = "",
) -> BudgetMatch:
    """Find the knob value whose measured compute (`measure(value)`, in full computations) matches `budget`.

    A continuous knob (`knob_range`) is bisected, assuming compute is monotone in the knob (increasing iff
    `compute_grows_with_knob`); with `knob_scale` the bisection halves `asinh(knob / knob_scale)` instead of the
    knob, so a wide range (a threshold up to its saturation) costs few evaluations. Discrete knobs (`knob_values`)
    are bisected over their sorted values when `monotone`, else searched exhaustively. Stops as soon as the
    measured compute is within `tol` (relative) of the budget; reports the nearest budgets otherwise, and when
    the budget lies beyond what the whole knob range reaches, says so with `limit` (why the method's compute
    is bounded there).
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    evals: dict[float, float] = {}

    def ev(v: float) -> float:
        v = float(v)
        if v not in evals:
            evals[v] = float(measure(v))
        return evals[v]

    def done() -> BudgetMatch:
        return _finish(method, budget, knob, evals, tol, limit)

    # The knob end giving the most compute (the full-compute end: an interval of 1, a threshold of 0) is the
    # dearest probe, often half a search's cost; it is measured only when the bisection found no value
    # within tol and nothing measured lies above the budget (to tell a gap from a budget beyond the range).
    def done_checking_top(top: float) -> BudgetMatch:
        result = done()
        if not result.reachable and all(m < budget for m in evals.values()):
            ev(top)
            result = done()
        return result

    if knob_values is not None:
        values = sorted(float(v) for v in knob_values)
        if not values:
            raise ValueError(f"{method}: knob_values is empty")
        if not monotone:
            for v in values:
                ev(v)
            return done()
        # index bisection; `small`/`large`: the indices giving less / more compute
        small, large = (0, len(values) - 1) if compute_grows_with_knob else (len(values) - 1, 0)
        if _within(ev(values[small]), budget, tol) or evals[values[small]] > budget:
            return done()
        top = values[large]
        while abs(small - large) > 1:
            mid = (small + large) // 2
            m = ev(values[mid])
            if _within(m, budget, tol):
                # a neighbour may be closer still (the exhaustive search's pick)
                for near in (mid - 1, mid + 1):
                    if 0 <= near < len(values):
                        ev(values[near])
                break
            if m < budget:
                small = mid
            else:
                large = mid
        return done_checking_top(top)
    if knob_range is None:
        raise ValueError(f"{method}: give knob_range (continuous) or knob_values (discrete)")
    lo, hi = float(knob_range[0]), float(knob_range[1])
    if not lo < hi:
        raise ValueError(f"{method}: knob_range must be (lo, hi) with lo < hi, got {knob_range}")
    to, back = _warp(knob_scale)
    # `small`/`large`: the knob ends giving less / more compute.
    small, large = (lo, hi) if compute_grows_with_knob else (hi, lo)
    if _within(ev(small), budget, tol) or evals[small] > budget:
        return done()
    top = large
    while len(evals) + (top not in evals) < max_evals:  # the unmeasured top end counts, as if measured
        mid = back((to(small) + to(large)) / 2)
        m = ev(mid)
        if _within(m, budget, tol):
            break
        if m < budget:
            small = mid
        else:
            large = mid
    return done_checking_top(top)


def search_method(
    method: Any,
    measure: Callable[[float], float],
    budget: float,
    tol: float = DEFAULT_TOLERANCE,
    search: KnobSearch | None = None,
) -> BudgetMatch:
    """`search_knob` for a `baselines.base.CacheMethod`, with its search settings (default: `knob_search(name)`)."""
    s = search or knob_search(method.name)
    return search_knob(
        measure,
        budget,
        method=method.name,
        knob=method.knob,
        knob_range=s.knob_range,
        knob_values=s.knob_values,
        compute_grows_with_knob=s.compute_grows_with_knob,
        tol=tol,
        knob_scale=s.knob_scale,
        monotone=s.knob_monotone,
        limit=getattr(method, "budget_limit", ""),
    )


def search_schedule_size(
    measure: Callable[[int], float | None],
    budget: int,
    num_steps: int,
    k_min: int = 1,
    tol: float = DEFAULT_TOLERANCE,
    method: str = "dpcache",
) -> BudgetMatch:
    """The number of key steps k whose measured compute is closest to `budget` (a fixed-schedule method).

    A cache that skips only the transformer blocks still runs the rest of the transformer (embedders,
    refiners, output norm) at every step, so k key steps cost `k + (T - k) * o` full computations, `o` the
    share of a step outside the blocks. One measurement at k = K estimates `o`; the search jumps to
    `k = (K - T o) / (1 - o)` and walks ±1 while that brings the measured compute closer to K.
    `measure(k)` returns None for a k that cannot be planned (treated as the end of the range).
    """
    evals: dict[int, float] = {}
    unplannable: set[int] = set()

    def ev(k: int) -> float | None:
        if k in unplannable or not k_min <= k <= num_steps:
            return None
        if k not in evals:
            m = measure(k)
            if m is None:
                unplannable.add(k)
                return None
            evals[k] = float(m)
        return evals[k]

    k = max(k_min, min(budget, num_steps))
    m = ev(k)
    if m is None:
        raise ValueError(f"{method}: K={k} key steps cannot be planned")
    if k < num_steps and m > k:
        o = min(0.99, (m - k) / (num_steps - k))
        guess = max(k_min, min(budget, round((budget - num_steps * o) / (1 - o))))
        while guess < k and ev(guess) is None:
            guess += 1
        k = guess
    for step in (-1, 1):
        while (nxt := ev(k + step)) is not None and abs(nxt - budget) < abs(evals[k] - budget):
            k += step
    limit = (
        f"{min(evals)} key steps are the fewest this schedule allows (fixed full steps, finite-cost paths)"
    )
    return _finish(method, budget, "key steps", {float(a): b for a, b in evals.items()}, tol, limit)


def knob_signature(method: Any, search: KnobSearch | None = None) -> str:
    """A short hash of everything that decides a method's knob search (knob, range / values, scale, direction,
    monotonicity, its fixed settings `config_id`, the search format): part of the budget-cache key, so a search
    cached under an older knob range or method setting is never reused."""
    s = search or knob_search(method.name)
    desc = {
        "format": FORMAT_VERSION,
        "knob": method.knob,
        "range": None if s.knob_range is None else [float(v) for v in s.knob_range],
        "values": None if s.knob_values is None else [float(v) for v in s.knob_values],
        "grows": bool(s.compute_grows_with_knob),
        "scale": s.knob_scale,
        "monotone": s.knob_monotone,
        "config": getattr(method, "config_id", ""),
    }
    return "s" + hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:10]


def _lock(path: Path) -> FileLock:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return FileLock(str(Path(tempfile.gettempdir()) / f"dpcache-budget-{digest}.lock"), timeout=3600)


class BudgetCacheError(InputFileError):
    """A budget cache file that exists but cannot be read as `{key: search}`; names the file."""


def load_cache(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The budget cache file ({key: BudgetMatch dict}); `{}` when absent. A file that exists but is not a
    JSON object (truncated, corrupt, `"abc"`) raises BudgetCacheError naming it — never read as empty."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BudgetCacheError(p, f"budget cache is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BudgetCacheError(p, f"budget cache must be a JSON object, got {type(data).__name__}")
    return data


def _set_aside(p: Path, exc: BudgetCacheError) -> dict[str, dict[str, Any]]:
    """Keep an unreadable cache next to itself (`<name>.corrupt-<pid>`), say so on stderr once, start anew."""
    import sys

    aside = p.with_name(f"{p.name}.corrupt-{os.getpid()}")
    os.replace(p, aside)
    print(
        f"dpcache-bench: warning: {exc}; kept as {aside}, its searches run again", file=sys.stderr, flush=True
    )
    return {}


def _current(entry: Any) -> bool:
    """A cached search written by this format (older entries are searched again and overwritten)."""
    if not (isinstance(entry, dict) and entry.get("format") == FORMAT_VERSION):
        return False
    try:
        BudgetMatch.from_dict(entry)
    except (TypeError, ValueError):  # a damaged entry: searched again
        return False
    return True


def cached_search(
    cache_path: str | os.PathLike[str], key: str, search: Callable[[], BudgetMatch]
) -> BudgetMatch:
    """`search()` once per `key`: the result is stored in the JSON file `cache_path` (atomic write under a
    lock, so parallel workers neither collide nor repeat the search) and reused afterwards. An unreadable
    cache file is never overwritten silently: it is kept aside and named in a warning."""
    p = Path(cache_path)
    try:
        found = load_cache(p).get(key)
    except BudgetCacheError:
        found = None  # handled under the lock
    if _current(found):
        return BudgetMatch.from_dict(found)
    with _lock(p):
        try:
            data = load_cache(p)
        except BudgetCacheError as exc:
            data = _set_aside(p, exc)
        if _current(data.get(key)):
            return BudgetMatch.from_dict(data[key])
        result = search()
        data[key] = result.to_dict()
        write_json_atomic(p, data)
        return result
