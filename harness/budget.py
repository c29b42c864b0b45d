"""Budget matching: search a cache method's knob so its measured compute lands on K full computations (±5%)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.gates import write_json_atomic

DEFAULT_TOLERANCE = 0.05
FORMAT_VERSION = 1


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


def _finish(method: str, budget: float, knob: str, evals: dict[float, float], tol: float) -> BudgetMatch:
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
    hit = ", ".join(f"K={m:.3g} at {knob}={v:.6g}" for v, m in nearest)
    msg = (
        f"{method} cannot reach budget K={budget:g} within {tol:.0%}: the nearest budgets it can hit are "
        f"{hit or 'none'} (measured compute over {len(pairs)} knob values)"
    )
    return BudgetMatch(method, budget, knob, best_v, best_m, False, tol, pairs, nearest, msg)


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
) -> BudgetMatch:
    """Find the knob value whose measured compute (`measure(value)`, in full computations) matches `budget`.

    Discrete knobs (`knob_values`) are searched exhaustively; a continuous knob (`knob_range`) is bisected,
    assuming compute is monotone in the knob (increasing iff `compute_grows_with_knob`). Stops as soon as
    the measured compute is within `tol` (relative) of the budget; reports the nearest budgets otherwise.
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    evals: dict[float, float] = {}

    def ev(v: float) -> float:
        v = float(v)
        if v not in evals:
            evals[v] = float(measure(v))
        return evals[v]

    if knob_values is not None:
        if not list(knob_values):
            raise ValueError(f"{method}: knob_values is empty")
        for v in knob_values:
            ev(v)
        return _finish(method, budget, knob, evals, tol)
    if knob_range is None:
        raise ValueError(f"{method}: give knob_range (continuous) or knob_values (discrete)")
    lo, hi = float(knob_range[0]), float(knob_range[1])
    if not lo < hi:
        raise ValueError(f"{method}: knob_range must be (lo, hi) with lo < hi, got {knob_range}")
    # `small`/`large`: the knob ends giving less / more compute.
    small, large = (lo, hi) if compute_grows_with_knob else (hi, lo)
    for end in (small, large):
        if _within(ev(end), budget, tol):
            return _finish(method, budget, knob, evals, tol)
    if not (evals[small] < budget < evals[large]):
        return _finish(method, budget, knob, evals, tol)
    while len(evals) < max_evals:
        mid = (small + large) / 2
        m = ev(mid)
        if _within(m, budget, tol):
            break
        if m < budget:
            small = mid
        else:
            large = mid
    return _finish(method, budget, knob, evals, tol)


def _lock(path: Path) -> FileLock:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return FileLock(str(Path(tempfile.gettempdir()) / f"dpcache-budget-{digest}.lock"), timeout=3600)


def load_cache(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The budget cache file ({key: BudgetMatch dict}); `{}` when absent or unreadable."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_search(cache_path: str | os.PathLike[str], key: str, search: Callable[[], BudgetMatch]) -> BudgetMatch:
    """`search()` once per `key`: the result is stored in the JSON file `cache_path` (atomic write under a
    lock, so parallel workers neither collide nor repeat the search) and reused afterwards."""
    p = Path(cache_path)
    found = load_cache(p).get(key)
    if found is not None:
        return BudgetMatch.from_dict(found)
    with _lock(p):
        data = load_cache(p)
        if key in data:
            return BudgetMatch.from_dict(data[key])
        result = search()
        data[key] = result.to_dict()
        write_json_atomic(p, data)
        return result
