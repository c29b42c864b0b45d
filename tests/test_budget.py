"""Budget matching: bisection and exhaustive knob search hit K within 5%, or report the nearest budgets."""

from __future__ import annotations

import json
import math

import pytest

from harness.budget import BudgetMatch, cached_search, search_knob

T = 50


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
    r = search_knob(measure, 13, knob="interval", knob_values=[1, 2, 3, 4, 5, 6])
    assert r.reachable and r.value == 4 and r.measured == 13
    assert len(r.evaluations) == 6
    bad = search_knob(measure, 21, knob="interval", knob_values=[1, 2, 3, 4])
    assert not bad.reachable and sorted(m for _, m in bad.nearest) == [17.0, 25.0]


def test_bad_arguments():
    with pytest.raises(ValueError):
        search_knob(smooth, 13)
    with pytest.raises(ValueError):
        search_knob(smooth, 0, knob_range=(0, 1))
    with pytest.raises(ValueError):
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
