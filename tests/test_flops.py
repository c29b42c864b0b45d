"""The fast FLOP counter (harness/flops.py) gives `FlopCounterMode`'s exact total for every cache on every family."""

from __future__ import annotations

import pytest
import torch

from benchmarks.fidelity import pin

T = pin.T
# every ported / wrapped baseline at its pinned skipping knob, and the default competitors on the other families
CASES = sorted(pin.PINS.items()) + [
    (m, (model, knob))
    for model in ("wan-tiny", "dit-tiny", "hunyuan-video-tiny")
    for m, knob in (("teacache", 1.0), ("fora", 3), ("taylorseer", 3))
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _both_counts(model, run, apply=lambda: None, remove=lambda: None):
    """(fast total, FlopCounterMode total, outputs equal) of two identical runs of `run` with the cache
    installed by `apply` (outside the counting proxy, as the harness does)."""
    import harness.flops as hf
    from harness.context import counting_transformer
    from harness.measure import flop_counter

    def counted():
        apply()
        try:
            with counting_transformer(model.pipe) as proxy:
                out = run()
        finally:
            remove()
        return proxy.flops, out

    fast, a = counted()
    original = hf.function_flop_counter
    hf.function_flop_counter = flop_counter  # the proxy imports it per call: torch's own counter now
    try:
        exact, b = counted()
    finally:
        hf.function_flop_counter = original
    return fast, exact, torch.equal(a, b)


@pytest.mark.parametrize(("method_name", "case"), CASES, ids=[f"{m}-{c[0]}" for m, c in CASES])
def test_fast_count_equals_flop_counter_mode(method_name, case):
    from baselines.base import get_method, load_all

    if method_name not in load_all():
        pytest.skip(f"{method_name} is not registered here (its optional dependency is not installed)")
    model_name, knob = case
    m = pin.model(model_name)
    method = get_method(method_name)
    ok, why = method.supports(m.spec.family)
    if not ok:
        pytest.skip(why)
    prompt = m.spec.evaluation_prompts[0]
    artifacts = None
    if method_name == "magcache":  # its ratios are calibrated (as pinned: the first calibration prompt)
        from baselines.magcache import calibrate_magcache

        cal = m.spec.calibration_prompts[0]
        artifacts = calibrate_magcache(m.pipe, T, lambda: m.sample(cal, 42, T))
    fast, exact, same = _both_counts(
        m,
        lambda: m.sample(prompt, 0, T),
        lambda: method.apply(m.pipe, knob, T, artifacts),
        lambda: method.remove(m.pipe),
    )
    assert same, "the counter changed the computation"
    assert fast == exact > 0


@pytest.mark.parametrize("model_name", ["flux-tiny", "wan-tiny", "dit-tiny", "hunyuan-video-tiny"])
def test_fast_count_equals_flop_counter_mode_for_dpcache_and_full(model_name):
    """DPCache (key steps and Taylor-predicted steps) and the uncached sample: the same totals; a cached
    sample counts fewer FLOPs than a full one (the counter sees the skipped blocks)."""
    from dpcache import DPCacheConfig, apply_dpcache, remove_dpcache

    m = pin.model(model_name)
    prompt = m.spec.evaluation_prompts[0]
    full = _both_counts(m, lambda: m.sample(prompt, 0, T))

    dp = _both_counts(
        m,
        lambda: m.sample(prompt, 0, T),
        lambda: apply_dpcache(m.pipe, DPCacheConfig(num_inference_steps=T, schedule=[0, 1, 2, 5, 8])),
        lambda: remove_dpcache(m.pipe),
    )
    assert full[0] == full[1] > 0 and full[2]
    assert dp[0] == dp[1] > 0 and dp[2]
    assert dp[0] < full[0]
