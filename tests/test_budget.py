"""Budget matching: bisection and exhaustive knob search hit K within 5%, or report the nearest budgets."""

from __future__ import annotations

import json
import math

import pytest

from harness.budget import BudgetMatch, cached_search, search_knob, search_schedule_size

T = 50


# Every baseline's knob signature (part of the budget-cache key) as it was when the search settings lived on the
# baseline classes: moving them to harness.knob_search must not invalidate a cached search.
SIGNATURES = {
    "dbcache": "se2eb4d6740",
    "delta-dit": "s1759bfa13b",
    "dicache": "s5617cda96d",
    "easycache": "sb289885cf7",
    "fastercache": "se4a9230843",
    "firstblockcache": "sf7a0c4864d",
    "fora": "s7232130384",
    "magcache": "sea91b7971e",  # Wan K/R 3/0.2 -> 4/0.2 (the authors' T2V-1.3B setting)
    "omnicache": "s192a249253",
    "pab": "s44708c8ffa",
    "seacache": "s35947e268d",
    "taylorseer": "s2211ef9dc9",
    "teacache": "s0e63762693",
    "toca": "s4c68880b84",
}


def smooth(threshold: float) -> float:
    """A fake monotone threshold method: a larger threshold skips more steps."""
    return T * (1.0 - 0.9 * threshold)


@pytest.mark.parametrize("budget", [25, 13, 9])
def test_bisection_hits_budget_within_5_percent(budget):
    calls = []

    def measure(v):
        calls.append(v)
        return smooth(v)

    r = search_knob(measure, budget, method="fake", knob="threshold", knob_range=(0.0, 1.0))
    assert r.reachable and r.message == ""
    assert abs(r.measured - budget) <= 0.05 * budget
    assert abs(smooth(r.value) - r.measured) < 1e-9
    assert len(calls) <= 16


def test_bisection_direction_when_compute_grows_with_knob():
    r = search_knob(lambda v: 5 + 40 * v, 25, knob_range=(0.0, 1.0), compute_grows_with_knob=True)
    assert r.reachable and abs(r.measured - 25) <= 1.25


def test_step_function_gap_is_reported_with_nearest_budgets():
    # compute jumps from 10 to 20 at threshold 0.5: K=15 cannot be hit within 5%
    r = search_knob(lambda v: 20.0 if v < 0.5 else 10.0, 15, method="jumpy", knob="t", knob_range=(0.0, 1.0))
    assert not r.reachable
    assert sorted(m for _, m in r.nearest) == [10.0, 20.0]
    assert "jumpy cannot reach budget K=15" in r.message and "K=10" in r.message and "K=20" in r.message


def test_out_of_range_budget_is_unreachable():
    r = search_knob(smooth, 2, knob_range=(0.0, 1.0))
    assert not r.reachable and [m for _, m in r.nearest] == [pytest.approx(5.0)]


def test_exhaustive_discrete_knob():
    measure = lambda i: float(math.ceil(T / i))  # noqa: E731  interval i: one full step in i
    r = search_knob(measure, 13, knob="interval", knob_values=[1, 2, 3, 4, 5, 6], monotone=False)
    assert r.reachable and r.value == 4 and r.measured == 13
    assert len(r.evaluations) == 6
    for monotone in (False, True):  # a gap between two values: both neighbours are reported
        bad = search_knob(measure, 21, knob="interval", knob_values=[1, 2, 3, 4], monotone=monotone)
        assert not bad.reachable and sorted(m for _, m in bad.nearest) == [17.0, 25.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="give knob_range"):
        search_knob(smooth, 13)
    with pytest.raises(ValueError, match="budget must be positive"):
        search_knob(smooth, 0, knob_range=(0, 1))
    with pytest.raises(ValueError, match="lo < hi"):
        search_knob(smooth, 13, knob_range=(1, 0))


def test_cached_search_runs_once_and_writes_json(tmp_path):
    path = tmp_path / "budgets.json"
    calls = []

    def search():
        calls.append(1)
        return search_knob(smooth, 13, method="fake", knob="threshold", knob_range=(0.0, 1.0))

    a = cached_search(path, "m-K13", search)
    b = cached_search(path, "m-K13", search)
    assert calls == [1] and a == b and isinstance(b, BudgetMatch)
    data = json.loads(path.read_text())
    assert data["m-K13"]["reachable"] is True
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_scaled_bisection_resolves_small_thresholds_in_a_wide_range():
    """A threshold whose useful values are ~0.01..0.3 but which saturates only near 1e3: the asinh-warped bisection
    still lands within 5% of K in the evaluation budget; the linear one over the same range does not."""

    def sat(v: float) -> float:  # 50 at 0, K=13 near 0.075, floor 12 at saturation (v >= 500)
        return max(12.0, 50.0 - 500.0 * min(v, 0.076)) if v < 500 else 12.0

    r = search_knob(sat, 13, knob_range=(0.0, 1e3), knob_scale=0.01)
    assert r.reachable and abs(r.measured - 13) <= 0.65 and len(r.evaluations) <= 16
    assert not search_knob(sat, 13, knob_range=(0.0, 1e3)).reachable


def test_unreachable_below_the_floor_names_the_limit_and_the_least_compute():
    r = search_knob(
        lambda v: 20.0 if v > 0 else 50.0,
        9,
        method="capped",
        knob="threshold",
        knob_range=(0.0, 1e3),
        knob_scale=0.01,
        limit="warm-up and skip cap",
    )
    assert not r.reachable and [m for _, m in r.nearest] == [20.0]
    assert (
        "nearest budgets it can hit are K=20 at threshold=1000, the least compute its whole knob range"
        in r.message
    )
    assert r.message.endswith("warm-up and skip cap")
    gap = search_knob(lambda v: 20.0 if v < 0.5 else 10.0, 15, knob_range=(0.0, 1.0), limit="never shown")
    assert "never shown" not in gap.message  # a gap inside the range is not the method's bound


def test_monotone_discrete_knob_is_bisected():
    measure_calls = []

    def measure(i):
        measure_calls.append(i)
        return float(math.ceil(T / i))

    r = search_knob(measure, 9, knob="interval", knob_values=range(1, 51))
    assert r.reachable and abs(r.measured - 9) <= 0.45 and len(measure_calls) <= 8
    r = search_knob(measure, 0.5, knob="interval", knob_values=range(1, 51), limit="interval cap")
    assert not r.reachable and r.nearest == [(50.0, 1.0)] and "interval cap" in r.message
    calls = []
    exhaustive = search_knob(
        lambda i: calls.append(i) or float(math.ceil(T / i)), 9, knob_values=range(1, 11), monotone=False
    )
    assert len(calls) == 10 and exhaustive.reachable


def test_knob_signatures_are_unchanged():
    from baselines.base import load_all
    from harness.budget import knob_signature

    assert {name: knob_signature(m) for name, m in load_all().items()} == SIGNATURES


def test_knob_signature_changes_with_the_knob_range_and_settings():
    from dataclasses import replace

    from baselines.base import get_method
    from harness.budget import knob_signature
    from harness.knob_search import knob_search

    m, s = get_method("magcache"), knob_search("magcache")
    sig = knob_signature(m)
    assert sig == knob_signature(replace(m), replace(s)) == SIGNATURES["magcache"]
    assert sig != knob_signature(m, replace(s, knob_range=(0.0, 1.0)))
    assert sig != knob_signature(m, replace(s, knob_scale=None))
    assert sig != knob_signature(replace(m, config_id="other"))
    assert len({knob_signature(x) for x in __import__("baselines.base").base.load_all().values()}) > 1


def test_cached_search_ignores_entries_of_an_older_format(tmp_path):
    path = tmp_path / "budgets.json"
    stale = search_knob(smooth, 13, method="fake", knob="threshold", knob_range=(0.0, 1.0)).to_dict()
    stale["format"], stale["value"] = 1, 123.0
    path.write_text(json.dumps({"m-K13": stale}))
    r = cached_search(path, "m-K13", lambda: search_knob(smooth, 13, knob_range=(0.0, 1.0)))
    assert r.value != 123.0 and json.loads(path.read_text())["m-K13"]["format"] == 2


@pytest.mark.parametrize("overhead", [0.0, 0.02, 0.08, 0.2])
@pytest.mark.parametrize("budget", [25, 13, 9])
def test_schedule_size_matches_measured_compute(budget, overhead):
    """k key steps cost k + (T - k) * o: the search picks the k closest to K, checked against every k."""
    calls = []

    def measure(k: int) -> float:
        calls.append(k)
        return k + (T - k) * overhead

    r = search_schedule_size(measure, budget, T, k_min=3)
    searched = len(set(calls))
    best = min(range(3, T + 1), key=lambda k: (abs(measure(k) - budget), k))
    assert r.value == best
    assert r.reachable == (abs(measure(best) - budget) <= 0.05 * budget)
    assert searched <= 6  # an estimate and a short walk, not a sweep
    if overhead == 0:
        assert r.value == budget and r.measured == budget


def test_schedule_size_reports_the_floor_when_overhead_is_too_large():
    r = search_schedule_size(lambda k: k + (T - k) * 0.5, 9, T, k_min=3)
    assert not r.reachable and r.value == 3
    assert "3 key steps are the fewest" in r.message and "K=26.5" in r.message


def test_schedule_size_skips_sizes_the_planner_refuses():
    """Sizes with no finite-cost schedule (measure → None) bound the walk instead of failing it."""
    r = search_schedule_size(lambda k: None if k < 7 else k + (T - k) * 0.3, 9, T, k_min=3)
    assert r.value == 7 and not r.reachable and "7 key steps are the fewest" in r.message
