"""FirstBlockCache (diffusers' hook, our port) against chengzeyi/ParaAttention's flux adapter on flux-tiny."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# the fetched chengzeyi/ParaAttention (a checkout or bare git dir); the checks skip without it
AUTHORS = Path(os.environ.get("DPCACHE_PARAATTENTION_SRC", "/work/.mirror/chengzeyi+ParaAttention/repo"))


@pytest.fixture(scope="module")
def setup():
    from benchmarks.fidelity.common import AuthorsSourceMissing, authors_source, load_model
    from benchmarks.fidelity.firstblockcache import REPO, load_para_attn

    try:
        src = authors_source(str(AUTHORS), REPO)
        mods = load_para_attn(src)
    except AuthorsSourceMissing as e:
        pytest.skip(f"ParaAttention source not fetched: {e}")
    torch.set_num_threads(1)
    return load_model("flux-tiny"), mods


def _compare(setup, value: float, alter: bool):
    from benchmarks.fidelity.firstblockcache import compare_one

    model, mods = setup
    return compare_one(model, mods, "test", 10, value, model.spec.evaluation_prompts[0], 0, alter)


def test_per_branch_context_matches_diffusers_hook_exactly(setup) -> None:
    row = _compare(setup, 0.2, alter=True)
    assert row.steps_equal
    assert 0 < len(row.steps_ours) < 10, row.steps_ours  # the threshold does skip some steps
    assert row.max_abs == 0.0
    assert "deliberate" not in row.extra


def test_shared_default_context_differs_and_is_flagged(setup) -> None:
    row = _compare(setup, 0.2, alter=False)
    assert row.max_abs > 1e-3 and not row.steps_equal
    assert "enable_alter_cache=True" in row.extra["deliberate"]


def test_module_order_is_restored_after_their_patch(setup) -> None:
    from benchmarks.fidelity.firstblockcache import authors_cache

    model, mods = setup
    order = list(model.pipe.transformer._modules)
    with authors_cache(model, mods, 0.2):
        pass
    assert list(model.pipe.transformer._modules) == order
    assert "forward" not in vars(model.pipe.transformer)


def test_wan_adapter_matches_with_its_default_per_branch_state(setup) -> None:
    from benchmarks.fidelity.common import load_model
    from benchmarks.fidelity.firstblockcache import compare_one

    _, mods = setup
    wan = load_model("wan-tiny")
    row = compare_one(wan, mods, "test", 10, 0.2, wan.spec.evaluation_prompts[0], 0, True)
    assert row.extra["authors_default"] is True
    assert row.steps_equal and 0 < len(row.steps_ours) < 10, row.steps_ours
    assert row.max_abs == 0.0
