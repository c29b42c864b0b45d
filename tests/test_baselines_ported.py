"""The ported competitor caches against the uncached pipeline, on tiny random-weight pipelines of every family."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_pipelines import FAMILIES, PROMPT_PAIRS, generators
from tiny_pipelines import build_family as _family

from baselines.base import Calibration, get_method
from dpcache.adapters import block_layout
from harness.knob_search import knob_search

T = 10
# method -> a knob value that skips at T=10 on every tiny family
SKIPPING = {
    "teacache": 1.0,
    "dicache": 0.5,
    "easycache": 0.5,
    "fora": 3,
    "toca": 3,
    "delta-dit": 3,
    "omnicache": 0.5,
}
STEP_HOOKS = {name: f"{name.replace('-', '_')}_step_hook" for name in SKIPPING}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """(name, pipe, call, uncached output, uncached compute count of the last block's attention)."""
    name = request.param
    pipe, call = _family(name)
    counter = _ComputeCounter(pipe.transformer)
    ref = call(generators(0), T, PROMPT_PAIRS[name][:1])
    counter.close()
    return name, pipe, call, ref, counter.n


def _method(method_name: str, family_name: str):
    method = get_method(method_name)
    if not method.supports(family_name)[0]:
        pytest.skip(method.supports(family_name)[1])
    return method


class _ComputeCounter:
    """Counts real computations of the last block's attention (its first Linear runs only when it computes)."""

    def __init__(self, transformer):
        block = block_layout(transformer).blocks[-1]
        attn = next(child for name, child in block.named_children() if name in ("attn", "attn1"))
        self.sub = next(m for m in attn.modules() if isinstance(m, torch.nn.Linear))
        self.n = 0
        self.handle = self.sub.register_forward_hook(self._hit)

    def _hit(self, *args):
        self.n += 1

    def close(self):
        self.handle.remove()


@pytest.mark.parametrize("method_name", list(SKIPPING))
def test_never_skip_equals_uncached(family, method_name):
    name, pipe, call, ref, _ = family
    method = _method(method_name, name)
    method.apply(pipe, method.never_skip, T, None)
    try:
        out = call(generators(0), T, PROMPT_PAIRS[name][:1])
        hits = method.cache_hits(pipe)
    finally:
        method.remove(pipe)
    assert hits == 0
    assert torch.allclose(out, ref, atol=1e-6, rtol=0), (out - ref).abs().max()


@pytest.mark.parametrize("method_name", list(SKIPPING))
def test_skipping_knob(family, method_name):
    """At a skipping knob (4 calls, to keep the file fast on busy CPUs): it skips and the skipped steps run no
    block; a second call gives the same output (state resets); CFG branches keep separate state; a batch of 2
    equals its samples run alone."""
    name, pipe, call, ref, full_count = family
    method = _method(method_name, name)
    prompts = PROMPT_PAIRS[name]
    method.apply(pipe, SKIPPING[method_name], T, None)
    counter = _ComputeCounter(pipe.transformer)
    try:
        out = call(generators(0), T, prompts[:1])
        hits = method.cache_hits(pipe)
        count, counter.n = counter.n, 0
        per_context = pipe.transformer._diffusers_hook.get_hook(STEP_HOOKS[method_name]).run_hits()
        again = call(generators(0), T, prompts[:1])
        hits_again = method.cache_hits(pipe)
        both = call(generators(0, 1), T, prompts)
        second = call(generators(1), T, prompts[1:])
    finally:
        counter.close()
        method.remove(pipe)
    # (2) it skips, and the output changes
    assert hits > 0
    assert not torch.allclose(out, ref, atol=1e-6), "skipped steps must change the output"
    assert torch.isfinite(out).all()
    # (6) skipped steps really skip the block: its attention runs fewer times
    assert count < full_count, "skipped steps must not run the block"
    if method_name == "delta-dit":  # late hits skip the front span, whose last block is not the one counted
        assert 0 < full_count - count < hits
    elif name != "dit":  # one row per call: every (step, branch) hit is one attention call not made
        assert full_count - count == hits
    # (5) state resets between calls
    assert torch.equal(out, again), "state must reset between pipeline calls"
    assert hits == hits_again
    # (4) CFG branches: separate contexts (FLUX / Wan / HunyuanVideo); DiT batches CFG, one context, state per row
    if name == "dit":
        assert set(per_context) == {"default"}
    else:
        assert set(per_context) == {"cond", "uncond"}, per_context
    # (3) a batch of 2 equals each sample alone
    assert torch.allclose(both[0], out[0], atol=1e-5), (both[0] - out[0]).abs().max()
    assert torch.allclose(both[1], second[0], atol=1e-5), (both[1] - second[0]).abs().max()


def test_remove_restores_uncached(family):
    name, pipe, call, ref, _ = family
    for method_name in SKIPPING:
        method = get_method(method_name)
        if method.supports(name)[0]:
            method.apply(pipe, SKIPPING[method_name], T, None)
            method.remove(pipe)
    assert torch.equal(call(generators(0), T, PROMPT_PAIRS[name][:1]), ref)


@pytest.mark.parametrize("method_name", ["teacache", "omnicache"])
def test_calibration_artifacts(method_name, tmp_path):
    pipe, call = _family("dit")
    method = get_method(method_name)

    def run_prompts():
        call(generators(0), T, (3,))
        call(generators(1), T, (8,))

    artifacts = method.calibrate(pipe, Calibration("dit-tiny", T, run_prompts, tmp_path))
    assert json.loads(json.dumps(artifacts)) == artifacts
    assert list(tmp_path.glob(f"{method_name}-dit-tiny-T{T}.json"))
    hook_name = STEP_HOOKS[method_name]
    knob = SKIPPING[method_name]
    method.apply(pipe, knob, T, artifacts)
    try:
        out = call(generators(0), T)
        config = pipe.transformer._diffusers_hook.get_hook(hook_name).config
    finally:
        method.remove(pipe)
    assert torch.isfinite(out).all()
    if method_name == "teacache":
        assert len(artifacts["coefficients"]) == 5
        assert config.coefficients_source == "fitted:dit-tiny"
        assert tuple(config.coefficients) == tuple(artifacts["coefficients"])
    else:
        assert len(artifacts["curvature"]) == T
        assert config.schedule_source == "calibrated:dit-tiny"
        assert len(config.key_steps()) == round(knob * T)


def test_registry_lists_ported_methods():
    from baselines.base import load_all

    methods = load_all()
    for name in SKIPPING:
        assert name in methods
    assert methods["easycache"].supports("flux")[0] is False
    assert "video" in methods["easycache"].supports("dit")[1]


def test_budget_knobs_reach_each_methods_own_floor():
    """Issue #5: interval knobs go up to T = 50 (the rules allow any interval), DiCache's threshold up to its
    saturation, and each method states why its compute is bounded (quoted when a budget is unreachable)."""
    for name in ("dicache", "fora", "toca", "delta-dit"):
        m, s = get_method(name), knob_search(name)
        assert m.budget_limit and m.config_id, name
        if s.knob_range is not None:
            assert s.knob_range[1] >= 1e3 and s.knob_scale, name
        else:
            assert list(s.knob_values) == list(range(1, 51)) and s.knob_monotone, name
