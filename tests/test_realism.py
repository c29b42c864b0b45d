"""The realism report's measures (harness.zoo.realism) on the authors' released tensors: the figures the zoo
issue quotes, and units that do not depend on a tensor's scale."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from harness.zoo import realism


@pytest.fixture(scope="module")
def flux() -> np.ndarray:
    return realism.released_tensor("flux")


def test_released_flux_path_cost_in_single_step_units(flux):
    """FLUX.1-dev, first 3 full steps, exact solver, K = 9: 174 units, of which the final segment 36."""
    k9 = realism.path_summary(flux, 3, 0, budgets=(9,))["budgets"]["9"]
    assert k9["path_cost_units"] == pytest.approx(174, abs=1)
    assert k9["final_segment_units"] == pytest.approx(36, abs=1)
    assert k9["key_steps"][:3] == [0, 1, 2] and len(k9["key_steps"]) == 9


def test_units_do_not_depend_on_the_tensors_scale(flux):
    a = realism.path_summary(flux, 3, 0, budgets=(9, 13))
    b = realism.path_summary(flux * 1e3, 3, 0, budgets=(9, 13))
    for k in ("9", "13"):
        assert a["budgets"][k]["path_cost_units"] == pytest.approx(b["budgets"][k]["path_cost_units"])
        assert a["budgets"][k]["key_steps"] == b["budgets"][k]["key_steps"]


def test_more_key_steps_cost_less_and_wan_uses_its_released_settings():
    wan = realism.released_tensor("wan")
    s = realism.path_summary(wan, 4, 1)
    costs = [s["budgets"][str(k)]["path_cost_units"] for k in realism.BUDGETS]
    assert all(a >= b for a, b in itertools.pairwise(costs))
    for k in realism.BUDGETS:
        keys = s["budgets"][str(k)]["key_steps"]
        assert keys[:4] == [0, 1, 2, 3] and keys[-1] == 49 and len(keys) == k
    assert realism.FAMILY_TENSOR["wan"][1:] == (4, 1)
