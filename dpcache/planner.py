"""Choose the K key (full-compute) steps from a path-aware cost tensor: exact and official DPs.

Pure numpy. A schedule is the sorted list of key steps ``s_0 = 0 < s_1 < … < s_{K-1}``; the
sentinel ``T`` is appended for costing, and the cost of a schedule is
``Σ_k C[s_{k-1}, s_k, s_{k+1}]`` with ``s_{-1} := 0`` (the first transition uses ``C[0, 0, ·]``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dpcache.errors import CostTensorError, DPCacheError, UnreachablePlanError

if TYPE_CHECKING:
    from dpcache.cost_tensor import CostTensor

SOLVERS = ("exact", "official")


@dataclass(frozen=True)
class Schedule:
    """The key steps chosen for one budget, with the path cost the planner paid for them."""

    key_steps: tuple[int, ...]
    num_steps: int
    budget: int
    path_cost: float
    solver: str

    def is_key(self, step: int) -> bool:
        """True when ``step`` is computed in full (not predicted)."""
        return step in self.key_steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the schedule."""
        return {
            "key_steps": list(self.key_steps),
            "path_cost": float(self.path_cost),
            "solver": self.solver,
            "budget": self.budget,
            "num_steps": self.num_steps,
        }


def default_max_jump(num_steps: int) -> int:
    """The released maximum distance between consecutive key steps: ``max(int(0.3·T), 1)``."""
    return max(int(num_steps * 0.3), 1)


def mandatory_steps(num_steps: int, first_full_steps: int, last_full_steps: int) -> list[int]:
    """Key steps every schedule must contain (the sentinel ``T`` excluded)."""
    steps = set(range(min(first_full_steps, num_steps))) | {0}
    if last_full_steps > 0:
        steps.update(range(max(num_steps - last_full_steps, 0), num_steps))
    return sorted(steps)


def _as_array(cost: CostTensor | np.ndarray) -> np.ndarray:
    arr = getattr(cost, "cost", cost)
    if not isinstance(arr, np.ndarray):
        raise CostTensorError(f"expected a CostTensor or numpy array, got {type(arr).__name__}")
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1:] != (arr.shape[0] + 1, arr.shape[0] + 1):
        raise CostTensorError(
            f"cost tensor must have shape (T, T+1, T+1), got {arr.shape}; pass a tensor calibrated for T steps"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CostTensorError(f"cost tensor must hold real numbers, got dtype {arr.dtype}")
    if np.isnan(arr).any():
        raise CostTensorError(
            "cost tensor contains NaN; re-calibrate or repair the tensor (use inf for 'not allowed')"
        )
    if np.isneginf(arr).any():
        raise CostTensorError("cost tensor contains -inf; costs must be finite or +inf ('not allowed')")
    return arr


def _check_args(
    num_steps: int, first_full_steps: int, last_full_steps: int, max_jump: int | None, solver: str
) -> int:
    if solver not in SOLVERS:
        raise DPCacheError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if first_full_steps < 0 or last_full_steps < 0:
        raise DPCacheError("first_full_steps and last_full_steps must be >= 0")
    if first_full_steps > num_steps or last_full_steps > num_steps:
        raise DPCacheError(
            f"first_full_steps={first_full_steps} / last_full_steps={last_full_steps} exceed T={num_steps}"
        )
    jump = default_max_jump(num_steps) if max_jump is None else int(max_jump)
    if jump < 1:
        raise DPCacheError(f"max_jump must be >= 1, got {jump}")
    return jump


def _check_budget(budget: int, num_steps: int, mandatory: Sequence[int]) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise DPCacheError(f"budget must be an integer, got {budget!r}")
    if budget < 1:
        raise DPCacheError(f"budget K={budget} must be >= 1")
    if budget > num_steps:
        raise DPCacheError(
            f"budget K={budget} exceeds the number of steps T={num_steps}; use K <= {num_steps}"
        )
    if budget < len(mandatory):
        raise DPCacheError(
            f"budget K={budget} is below the {len(mandatory)} mandatory full steps {list(mandatory)}; "
            f"raise K to >= {len(mandatory)} or lower first/last full steps"
        )


def _masked(arr: np.ndarray, num_steps: int, mandatory: Sequence[int], max_jump: int) -> np.ndarray:
    """Copy of the tensor with every transition i→j that skips a mandatory step or jumps too far set to inf."""
    masked = np.array(arr, dtype=np.float64, copy=True)
    is_mand = np.zeros(num_steps + 1, dtype=bool)
    is_mand[list(mandatory)] = True
    is_mand[num_steps] = True
    # mand_before[n] = number of mandatory steps < n; i→j skips one iff some mandatory m has i < m < j.
    mand_before = np.concatenate(([0], np.cumsum(is_mand)))
    idx = np.arange(num_steps + 1)
    skipped = mand_before[idx][None, :] - mand_before[idx + 1][:, None]  # [i, j] = #mandatory in (i, j)
    too_far = (idx[None, :] - idx[:, None]) > max_jump
    backwards = idx[None, :] <= idx[:, None]
    masked[:, (skipped > 0) | too_far | backwards] = np.inf
    return masked


def path_cost(cost: CostTensor | np.ndarray, key_steps: Iterable[int]) -> float:
    """Path-aware cost of a schedule: Σ C[prev, cur, next] over consecutive key steps, sentinel T appended."""
    arr = _as_array(cost)
    num_steps = arr.shape[0]
    steps = [int(s) for s in key_steps]
    if not steps or steps[0] != 0:
        raise DPCacheError(f"a schedule must start at step 0, got {steps}")
    if any(b <= a for a, b in itertools.pairwise(steps)) or steps[-1] >= num_steps:
        raise DPCacheError(f"key steps must be strictly increasing within 0..{num_steps - 1}, got {steps}")
    nodes = [*steps, num_steps]
    total = 0.0
    prev = 0
    for cur, nxt in itertools.pairwise(nodes):
        total += float(arr[prev, cur, nxt])
        prev = cur
    return total


def _exact_tables(masked: np.ndarray, max_budget: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """dp[m][a, i]: min cost of m transitions ending with previous key a and current key i; arg[m] its best a'."""
    num_steps = masked.shape[0]
    dp0 = np.full((num_steps, num_steps + 1), np.inf)
    dp0[0, 0] = 0.0
    dps, args = [dp0], [np.zeros((num_steps, num_steps + 1), dtype=np.int64)]
    state_cost = masked[:, :num_steps, :]  # (a, i, n): states with current i < T only
    for _ in range(max_budget):
        cand = dps[-1][:, :num_steps, None] + state_cost  # [a, i, n]
        best_a = np.argmin(cand, axis=0)  # earliest a wins ties
        dps.append(np.take_along_axis(cand, best_a[None], axis=0)[0])  # new state (prev=i, cur=n)
        args.append(best_a)
    return dps, args


def _exact_backtrack(dps: list[np.ndarray], args: list[np.ndarray], budget: int) -> tuple[list[int], float]:
    num_steps = dps[0].shape[0]
    final = dps[budget][:, num_steps]
    prev = int(np.argmin(final))
    total = float(final[prev])
    nodes = [num_steps, prev]
    cur = num_steps
    for m in range(budget, 1, -1):
        prev, cur = int(args[m][prev, cur]), prev
        nodes.append(prev)
    nodes.reverse()
    return nodes[:-1], total


def _official_tables(masked: np.ndarray, max_budget: int, is_mand: np.ndarray, max_jump: int):
    """The released recurrence: one greedy predecessor per (jumps, step) state; vectorised but bit-identical."""
    num_steps = masked.shape[0]
    n = num_steps + 1
    dp = np.full((max_budget + 1, n), np.inf)
    path = np.zeros((max_budget + 1, n), dtype=np.int64)
    dp[0, 0] = 0.0
    js = np.arange(n)
    i_minus_j = js[None, :] - js[:, None]  # [j, i]
    window = (i_minus_j >= 1) & (i_minus_j <= max_jump)
    for m in range(1, max_budget + 1):
        pred = path[m - 1].copy()
        both = np.zeros(n, dtype=bool)
        both[1:] = is_mand[1:] & is_mand[:-1]
        pred[both] = js[both] - 1
        pred[0] = 0
        jrows = js[:num_steps]  # the sentinel is never a predecessor
        trans = masked[pred[jrows], jrows, :]  # [j, i]
        cand = dp[m - 1, jrows][:, None] + trans
        ok = window[:num_steps] & (jrows[:, None] >= m - 1) & np.isfinite(dp[m - 1, jrows])[:, None]
        cand = np.where(ok, cand, np.inf)
        best = np.argmin(cand, axis=0)  # first minimum == released strict "<" over ascending j
        val = cand[best, js]
        reach = np.isfinite(val)
        dp[m, reach] = val[reach]
        path[m, reach] = best[reach]
    return dp, path


def _official_backtrack(dp: np.ndarray, path: np.ndarray, budget: int) -> tuple[list[int], float]:
    num_steps = dp.shape[1] - 1
    nodes = [num_steps]
    cur = num_steps
    for m in range(budget, 0, -1):
        cur = int(path[m, cur])
        nodes.append(cur)
    nodes.reverse()
    return nodes[:-1], float(dp[budget, num_steps])


def _solve(
    cost: CostTensor | np.ndarray,
    budgets: Sequence[int] | None,
    first_full_steps: int,
    last_full_steps: int,
    max_jump: int | None,
    solver: str,
    strict: bool,
) -> dict[int, Schedule]:
    arr = _as_array(cost)
    num_steps = arr.shape[0]
    jump = _check_args(num_steps, first_full_steps, last_full_steps, max_jump, solver)
    mand = mandatory_steps(num_steps, first_full_steps, last_full_steps)
    if budgets is None:
        wanted = list(range(len(mand), num_steps + 1))
    else:
        for b in budgets:
            _check_budget(b, num_steps, mand)
        wanted = sorted({int(b) for b in budgets})
    if not wanted:
        return {}
    masked = _masked(arr, num_steps, mand, jump)
    top = max(wanted)
    found: list[tuple[int, list[int], float]] = []
    if solver == "exact":
        dps, args = _exact_tables(masked, top)
        for b in wanted:
            if np.isfinite(dps[b][:, num_steps]).any():
                found.append((b, *_exact_backtrack(dps, args, b)))
    else:
        is_mand = np.zeros(num_steps + 1, dtype=bool)
        is_mand[[*mand, num_steps]] = True
        dp, path = _official_tables(masked, top, is_mand, jump)
        for b in wanted:
            if np.isfinite(dp[b, num_steps]):
                found.append((b, *_official_backtrack(dp, path, b)))
    result = {b: Schedule(tuple(steps), num_steps, b, total, solver) for b, steps, total in found}
    missing = [b for b in wanted if b not in result]
    if strict and missing:
        raise _unreachable(missing[0], arr, num_steps, first_full_steps, last_full_steps, jump, solver)
    return result


def _unreachable(
    budget: int, arr: np.ndarray, num_steps: int, first: int, last: int, jump: int, solver: str
) -> UnreachablePlanError:
    feasible = sorted(_solve(arr, None, first, last, jump, "exact", strict=False))
    where = f"T={num_steps}, first_full={first}, last_full={last}, max_jump={jump}"
    if not feasible:
        hint = "no budget has a finite-cost schedule; raise max_jump or check the tensor's finite entries"
    else:
        lo, hi = feasible[0], feasible[-1]
        hint = (
            f"finite-cost budgets are K={lo}..{hi}"
            if feasible == list(range(lo, hi + 1))
            else (f"finite-cost budgets are K in {feasible}")
        )
        if solver == "official" and budget in feasible:
            hint = "the official greedy recurrence dead-ends here; use solver 'exact'"
    return UnreachablePlanError(f"no finite-cost schedule for K={budget} ({where}); {hint}")


def plan(
    cost: CostTensor | np.ndarray,
    budget: int,
    *,
    first_full_steps: int = 3,
    last_full_steps: int = 0,
    max_jump: int | None = None,
    solver: str = "exact",
) -> Schedule:
    """Pick ``budget`` key steps minimising the path-aware cost (``solver="official"``: the released DP)."""
    return _solve(cost, [budget], first_full_steps, last_full_steps, max_jump, solver, strict=True)[budget]


def plan_all_budgets(
    cost: CostTensor | np.ndarray,
    *,
    first_full_steps: int = 3,
    last_full_steps: int = 0,
    max_jump: int | None = None,
    solver: str = "exact",
    budgets: Iterable[int] | None = None,
) -> dict[int, Schedule]:
    """Schedules for many budgets from one DP pass: every feasible K when ``budgets`` is None.

    With explicit ``budgets`` every one must be feasible (else UnreachablePlanError); with None the
    budgets without a finite-cost schedule are left out, and an error is raised only if none remains.
    """
    explicit = None if budgets is None else list(budgets)
    result = _solve(
        cost, explicit, first_full_steps, last_full_steps, max_jump, solver, strict=explicit is not None
    )
    if not result and explicit is None:
        arr = _as_array(cost)
        jump = default_max_jump(arr.shape[0]) if max_jump is None else int(max_jump)
        where = (
            f"T={arr.shape[0]}, first_full={first_full_steps}, last_full={last_full_steps}, max_jump={jump}"
        )
        raise UnreachablePlanError(
            f"no budget has a finite-cost schedule ({where}); raise max_jump or check the tensor's finite entries"
        )
    return result
