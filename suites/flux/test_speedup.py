"""FLUX suite: FLOPs speedup of every method × budget at least the expected one, and the cache actually hit."""

from __future__ import annotations

import pytest

from suites.flux.conftest import SPEED_METRICS, gate_record, result


@pytest.mark.speedup
def test_speedup(flux_session, gate, method, budget):
    from harness.runner import cache_check

    record = result(flux_session, method, budget)
    problem = cache_check(record)
    gate_record(flux_session, gate, record, SPEED_METRICS)
    assert problem is None, problem
