"""Planner tests: exact DP vs brute force, official DP vs the released recurrence, errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpcache.cost_tensor import CostTensor
from dpcache.errors import CostTensorError, DPCacheError, UnreachablePlanError
from dpcache.planner import Schedule, default_max_jump, mandatory_steps, path_cost, plan, plan_all_budgets

DATA = Path(__file__).parent / "data" / "official"
FLUX_K13 = (0, 1, 2, 4, 7, 10, 14, 19, 23, 28, 34, 40, 45)
# snapshot of the official solver on the released Wan tensor (K=12, first_full=4, last_full=1)
WAN_K12 = (0, 1, 2, 3, 5, 8, 13, 19, 26, 34, 42, 49)


@pytest.fixture(scope="module")
def flux() -> np.ndarray:
    return np.load(DATA / "flux_dev_T50_cost.npy")


@pytest.fixture(scope="module")
def wan() -> np.ndarray:
    return np.load(DATA / "wan21_i2v_T50_cost.npy")


def released_recurrence(cost, num_steps, first_full, last_full, max_jump=None):
    """Scalar transcription of the released greedy-predecessor DP, run for every jump count."""
    c = cost.copy()
    mand = set(range(first_full)) | {0, num_steps}
    if last_full > 0:
        mand |= set(range(num_steps - last_full, num_steps))
    n = num_steps + 1
    is_m = np.zeros(n, dtype=bool)
    is_m[list(mand)] = True
    for j in range(n):
        for i in range(j + 1, n):
            if is_m[j + 1 : i].any():
                c[:, j, i] = np.inf
    jump = max(int(num_steps * 0.3), 1) if max_jump is None else max_jump
    dp = np.full((n, n), np.inf)
    path = np.zeros((n, n), dtype=int)
    dp[0, 0] = 0
    for k in range(1, n):
        for i in range(k, n):
            best, best_j = np.inf, -1
            for j in range(max(k - 1, i - jump), i):
                if dp[k - 1, j] == np.inf:
                    continue
                if j == 0:
                    t = c[0, 0, i]
                elif is_m[j] and is_m[j - 1]:
                    t = c[j - 1, j, i]
                else:
                    t = c[path[k - 1, j], j, i]
                if t != np.inf and dp[k - 1, j] + t < best:
                    best, best_j = dp[k - 1, j] + t, j
            if best_j != -1:
                dp[k, i], path[k, i] = best, best_j
    return dp, path


def released_schedule(dp, path, budget):
    nodes, cur = [], dp.shape[1] - 1
    for k in range(budget, 0, -1):
        cur = int(path[k, cur])
        nodes.append(cur)
    return tuple(reversed(nodes)), float(dp[budget, -1])


def brute_force(cost, budget, first_full, last_full, max_jump):
    """Minimum path cost over every admissible schedule (None when none has finite cost)."""
    num_steps = cost.shape[0]
    mand = mandatory_steps(num_steps, first_full, last_full)
    free = [s for s in range(1, num_steps) if s not in mand]
    best = None
    for extra in itertools.combinations(free, budget - len(mand)):
        steps = sorted(mand + list(extra))
        if any(b - a > max_jump for a, b in zip(steps, [*steps[1:], num_steps])):
            continue
        total = path_cost(cost, steps)
        if np.isfinite(total) and (best is None or total < best):
            best = total
    return best


def random_cost(rng, num_steps, fill, integer):
    shape = (num_steps, num_steps + 1, num_steps + 1)
    vals = rng.integers(0, 4, size=shape).astype(float) if integer else rng.random(shape) * 10
    vals[rng.random(shape) > fill] = np.inf
    return vals


def check_exact_against_brute(cost, first_full, last_full, max_jump):
    num_steps = cost.shape[0]
    jump = default_max_jump(num_steps) if max_jump is None else max_jump
    mand = mandatory_steps(num_steps, first_full, last_full)
    for budget in range(len(mand), num_steps + 1):
        want = brute_force(cost, budget, first_full, last_full, jump)
        kwargs = dict(first_full_steps=first_full, last_full_steps=last_full, max_jump=max_jump)
        if want is None:
            with pytest.raises(UnreachablePlanError):
                plan(cost, budget, **kwargs)
            continue
        got = plan(cost, budget, **kwargs)
        assert got.path_cost == want
        assert path_cost(cost, got.key_steps) == got.path_cost
        assert set(mand) <= set(got.key_steps) and len(got.key_steps) == budget
        nodes = [*list(got.key_steps), num_steps]
        assert all(0 < b - a <= jump for a, b in itertools.pairwise(nodes))
        try:
            official = plan(cost, budget, solver="official", **kwargs)
        except UnreachablePlanError:
            continue
        assert got.path_cost <= official.path_cost


@pytest.mark.parametrize("seed", range(6))
def test_exact_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_steps = int(rng.integers(3, 11))
    first, last = int(rng.integers(0, 3)), int(rng.integers(0, 2))
    max_jump = [None, 2, 3, num_steps][seed % 4]
    cost = random_cost(rng, num_steps, fill=0.85, integer=seed % 2 == 0)
    check_exact_against_brute(cost, first, last, max_jump)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    num_steps=st.integers(1, 9),
    first=st.integers(0, 3),
    last=st.integers(0, 2),
    max_jump=st.sampled_from([None, 1, 2, 4]),
    fill=st.sampled_from([0.5, 0.9, 1.0]),
)
def test_exact_equals_brute_force_hypothesis(seed, num_steps, first, last, max_jump, fill):
    first, last = min(first, num_steps), min(last, num_steps)
    cost = random_cost(np.random.default_rng(seed), num_steps, fill, integer=seed % 2 == 0)
    check_exact_against_brute(cost, first, last, max_jump)


def test_brute_force_at_t12():
    rng = np.random.default_rng(12)
    cost = random_cost(rng, 12, fill=0.9, integer=False)
    for budget in (5, 7, 9):
        want = brute_force(cost, budget, 2, 1, 4)
        assert plan(cost, budget, first_full_steps=2, last_full_steps=1, max_jump=4).path_cost == want


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_steps=st.integers(2, 12),
    first=st.integers(0, 3),
    last=st.integers(0, 2),
    max_jump=st.sampled_from([None, 1, 2, 5]),
)
def test_official_matches_released_recurrence_random(seed, num_steps, first, last, max_jump):
    first, last = min(first, num_steps), min(last, num_steps)
    cost = random_cost(np.random.default_rng(seed), num_steps, 0.9, integer=seed % 3 == 0)
    dp, path = released_recurrence(cost, num_steps, first, last, max_jump)
    kwargs = dict(first_full_steps=first, last_full_steps=last, max_jump=max_jump)
    try:
        got = plan_all_budgets(cost, solver="official", **kwargs)
    except UnreachablePlanError:
        got = {}
    mand = mandatory_steps(num_steps, first, last)
    for budget in range(len(mand), num_steps + 1):
        if np.isinf(dp[budget, num_steps]):
            assert budget not in got
            continue
        steps, total = released_schedule(dp, path, budget)
        assert got[budget].key_steps == steps and got[budget].path_cost == total


@pytest.mark.parametrize(("name", "first", "last"), [("flux", 3, 0), ("wan", 4, 1)])
def test_released_tensors_official_bit_for_bit_and_exact_never_worse(name, first, last, request):
    cost = request.getfixturevalue(name)
    before = cost.copy()
    dp, path = released_recurrence(cost, 50, first, last)
    official = plan_all_budgets(cost, first_full_steps=first, last_full_steps=last, solver="official")
    exact = plan_all_budgets(cost, first_full_steps=first, last_full_steps=last)
    assert np.array_equal(cost, before)  # never mutates the caller's tensor
    assert sorted(exact) == list(range(exact_min := min(exact), 51)) and exact_min >= first + last
    for budget, sched in official.items():
        steps, total = released_schedule(dp, path, budget)
        assert sched.key_steps == steps and sched.path_cost == total
        assert path_cost(cost, steps) == total
        assert exact[budget].path_cost <= sched.path_cost
    better = [k for k in official if exact[k].path_cost < official[k].path_cost]
    assert better  # the greedy recurrence is not optimal on the released tensors


def test_official_reproduces_released_flux_schedule(flux):
    sched = plan(flux, 13, first_full_steps=3, solver="official")
    assert sched.key_steps == FLUX_K13
    assert sched.num_steps == 50 and sched.budget == 13 and sched.solver == "official"


def test_official_wan_schedule_snapshot(wan):
    sched = plan(wan, 12, first_full_steps=4, last_full_steps=1, solver="official")
    assert sched.key_steps == WAN_K12


def test_plan_accepts_cost_tensor_object(flux):
    tensor = CostTensor.from_array(flux, model_id="black-forest-labs/FLUX.1-dev")
    assert plan(tensor, 13, solver="official").key_steps == FLUX_K13


@pytest.mark.parametrize("solver", ["exact", "official"])
def test_plan_all_budgets_agrees_with_plan(flux, solver):
    every = plan_all_budgets(flux, solver=solver)
    assert min(every) == 6
    for budget in (6, 7, 9, 13, 20, 35, 50):
        assert every[budget] == plan(flux, budget, solver=solver)
    chosen = plan_all_budgets(flux, solver=solver, budgets=[9, 13])
    assert chosen == {9: every[9], 13: every[13]}


def test_full_budget_computes_every_step(flux):
    assert plan(flux, 50).key_steps == tuple(range(50))


def test_schedule_helpers():
    sched = Schedule((0, 1, 4), 6, 3, 1.5, "exact")
    assert sched.is_key(4) and not sched.is_key(3)
    assert json.loads(json.dumps(sched.to_dict())) == {
        "key_steps": [0, 1, 4],
        "path_cost": 1.5,
        "solver": "exact",
        "budget": 3,
        "num_steps": 6,
    }


def test_deterministic_ties():
    cost = np.zeros((10, 11, 11))
    first = plan(cost, 5, first_full_steps=1)
    assert all(plan(cost, 5, first_full_steps=1) == first for _ in range(3))


@pytest.mark.parametrize(
    ("budget", "kwargs", "match"),
    [
        (51, {}, "exceeds the number of steps"),
        (2, {}, "mandatory"),
        (3, {"first_full_steps": 2, "last_full_steps": 2}, "mandatory"),
        (0, {"first_full_steps": 0}, ">= 1"),
        (13, {"solver": "greedy"}, "unknown solver"),
        (13, {"max_jump": 0}, "max_jump"),
        (13.0, {}, "integer"),
    ],
)
def test_bad_arguments(flux, budget, kwargs, match):
    with pytest.raises(DPCacheError, match=match):
        plan(flux, budget, **kwargs)


def test_unreachable_raises_with_hint(flux):
    with pytest.raises(UnreachablePlanError, match=r"K=3.*max_jump=15.*K=6\.\.50"):
        plan(flux, 3)  # with jumps of <= 15 the sentinel 50 needs K >= 6
    with pytest.raises(UnreachablePlanError):
        plan(flux, 13, max_jump=2)
    with pytest.raises(UnreachablePlanError, match="no budget"):
        plan_all_budgets(np.full((5, 6, 6), np.inf))


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((5, 6, 5)), "shape"),
        (np.zeros((5, 6)), "shape"),
        (np.zeros((5, 6, 6), dtype=complex), "real numbers"),
    ],
)
def test_bad_tensors(arr, match):
    with pytest.raises(CostTensorError, match=match):
        plan(arr, 3)


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_nan_and_neg_inf_rejected(bad):
    arr = np.zeros((5, 6, 6))
    arr[1, 2, 3] = bad
    with pytest.raises(CostTensorError):
        plan(arr, 3)
    with pytest.raises(CostTensorError):
        path_cost(arr, [0, 1, 2])


def test_path_cost_rejects_bad_schedules():
    cost = np.zeros((5, 6, 6))
    for steps in ([], [1, 2], [0, 2, 2], [0, 5]):
        with pytest.raises(DPCacheError):
            path_cost(cost, steps)
