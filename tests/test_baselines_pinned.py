"""Every baseline port's output pinned on a tiny model (T = 10, a skipping knob): a refactor cannot drift silently.

The pinned values (tests/data/baselines_pinned.json) are the state checked against the authors' code
(benchmarks/fidelity, reports/competitors.md). After a deliberate change to a port or retrained tiny weights,
regenerate them with `python -m benchmarks.fidelity.pin` and say why in the commit.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.fidelity import pin

PINNED = json.loads(pin.PINNED.read_text())
REGEN = "regenerate with `python -m benchmarks.fidelity.pin` if the change is deliberate"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_ported_method_is_pinned():
    assert set(PINNED["methods"]) == set(pin.PINS), REGEN
    assert PINNED["T"] == pin.T


@pytest.mark.parametrize("method_name", sorted(pin.PINS))
def test_port_matches_pinned_output(method_name):
    from baselines.base import load_all

    if method_name not in load_all():
        pytest.skip(f"{method_name} is not registered here (its optional dependency is not installed)")
    want = PINNED["methods"][method_name]
    model = want["model"]
    assert pin.weights_hash(model) == PINNED["weights"][model], (
        f"{model}'s weights changed since pinning: {REGEN}"
    )
    got = pin.pinned_run(method_name)
    assert got["knob"] == want["knob"]
    assert got["steps"] == want["steps"], f"computed steps drifted: {REGEN}"
    assert got["mean"] == pytest.approx(want["mean"], abs=2e-4), REGEN
    assert got["std"] == pytest.approx(want["std"], abs=2e-4), REGEN
    assert got["thumb"] == pytest.approx(want["thumb"], abs=5e-4), REGEN
