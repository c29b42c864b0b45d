"""The wrapped competitor caches (diffusers hooks, cache-dit) against the uncached tiny pipelines of every family."""

from __future__ import annotations

import functools

import pytest
import torch
from tiny_pipelines import FAMILIES, PROMPT_PAIRS, generators
from tiny_pipelines import build_family as _build_family

from baselines import _wrapped
from baselines.base import get_method
from baselines.magcache import calibrate_magcache
from harness.knob_search import knob_search

T = 10
METHODS = ("firstblockcache", "taylorseer", "magcache", "pab", "fastercache", "seacache", "dbcache")
# A knob value at which every method skips on every tiny family (checked: hits > 0 everywhere).
SKIP_KNOB = {
    "firstblockcache": 1.0,
    "taylorseer": 2,
    "magcache": 0.1,
    "pab": 2,
    "fastercache": 2,
    "seacache": 1.0,
    "dbcache": 1.0,
}
# Methods whose skip decision is one scalar over the whole batch (FirstBlockCache's and DBCache's relative residual
# change, SeaCache's indicator distance averaged over samples): at an intermediate threshold a batch of two may
# decide differently from either sample alone, so its outputs legitimately differ from the single-sample runs.
# What must hold is that the cached tensors stay per sample; that is tested at a saturating threshold, where the
# decisions no longer depend on the data (every step after warm-up skips, up to the method's own caps).
BATCH_GLOBAL_KNOB = {"firstblockcache": 1e3, "seacache": 1e3, "dbcache": 1e3}
COMBOS = [(m, f) for m in METHODS for f in FAMILIES if get_method(m).supports(f)[0]]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on shared cores: one intra-op thread per process is faster than contending for two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _family(name: str):
    pipe, call = _build_family(name)
    return pipe, call, call(generators(0), T)


@functools.cache
def _artifacts(method: str, family: str) -> dict | None:
    if method != "magcache":
        return None
    pipe, call, _ = _family(family)
    return calibrate_magcache(pipe, T, lambda: call(generators(7), T))


class _Applied:
    """`with _Applied(method, family, knob) as (pipe, call):` — the method attached, always removed after."""

    def __init__(self, method: str, family: str, knob: float) -> None:
        self.method, self.family, self.knob = get_method(method), family, knob

    def __enter__(self):
        pipe, call, _ = _family(self.family)
        self.pipe = pipe
        self.method.apply(pipe, self.knob, T, _artifacts(self.method.name, self.family))
        return pipe, call

    def __exit__(self, *exc) -> None:
        self.method.remove(self.pipe)


def _call_same_branches(family: str, pipe, gens):
    """A CFG call whose negative prompt equals the prompt: cond and uncond see identical inputs."""
    prompt = PROMPT_PAIRS[family][0]
    if family == "flux":
        from harness.zoo import flux_tiny

        kw = {**flux_tiny.call_kwargs(prompt), "negative_prompt": prompt}
        return pipe(**kw, num_inference_steps=T, generator=gens, output_type="pt").images
    from harness.zoo import hunyuan_tiny, wan_tiny

    module = wan_tiny if family == "wan" else hunyuan_tiny
    kw = {
        **module.default_call_kwargs(),
        "num_inference_steps": T,
        "prompt": [prompt],
        "negative_prompt": [prompt],
    }
    return pipe(**kw, generator=gens).frames


def test_registry_lists_every_wrapped_method():
    for name in METHODS:
        m, s = get_method(name), knob_search(name)
        assert (s.knob_values is None) != (s.knob_range is None), name
        if s.knob_values is not None:
            assert list(s.knob_values) == sorted(s.knob_values) and m.never_skip in s.knob_values
        for family in set(FAMILIES) - m.families:
            assert m.unsupported.get(family), f"{name} must say why {family} is unsupported"
    assert get_method("seacache").supports("dit") == (False, get_method("seacache").unsupported["dit"])


@pytest.mark.parametrize(("method", "family"), COMBOS)
def test_never_skip_equals_uncached(method, family):
    ref = _family(family)[2]
    with _Applied(method, family, get_method(method).never_skip) as (pipe, call):
        out = call(generators(0), T)
        hits = get_method(method).cache_hits(pipe)
    assert hits == 0
    assert torch.allclose(out, ref, atol=1e-6, rtol=0), (out - ref).abs().max()


@pytest.mark.parametrize(("method", "family"), COMBOS)
def test_skips_repeats_and_removes(method, family):
    """At a skipping knob: hits > 0 in both CFG branches and the output changes; a second call starts from clean
    state (identical output and hits); after `remove` the pipeline is the uncached one again."""
    ref = _family(family)[2]
    with _Applied(method, family, SKIP_KNOB[method]) as (pipe, call):
        out = call(generators(0), T)
        hits = get_method(method).cache_hits(pipe)
        per_branch = _wrapped.hit_steps(pipe)
        again = call(generators(0), T)
        assert _wrapped.hit_steps(pipe) == per_branch
    assert hits > 0, per_branch
    assert set(per_branch) == ({"default"} if family == "dit" else {"cond", "uncond"})
    assert not torch.allclose(out, ref, atol=1e-6), "skipped work must change the output"
    assert torch.isfinite(out).all()
    assert torch.equal(out, again)
    after = call(generators(0), T)
    assert torch.allclose(after, ref, atol=1e-6, rtol=0), (after - ref).abs().max()
    assert not hasattr(pipe.transformer, "_bench_wrapped_run")


@pytest.mark.parametrize(("method", "family"), COMBOS)
def test_batch_of_two_matches_single_samples(method, family):
    prompts = PROMPT_PAIRS[family]
    with _Applied(method, family, BATCH_GLOBAL_KNOB.get(method, SKIP_KNOB[method])) as (pipe, call):
        both = call(generators(0, 1), T, prompts)
        assert get_method(method).cache_hits(pipe) > 0
        first = call(generators(0), T, prompts[:1])
        second = call(generators(1), T, prompts[1:])
    assert torch.allclose(both[0], first[0], atol=1e-5), (both[0] - first[0]).abs().max()
    assert torch.allclose(both[1], second[0], atol=1e-5), (both[1] - second[0]).abs().max()


@pytest.mark.parametrize(("method", "family"), [c for c in COMBOS if c[1] != "dit"])
def test_cfg_branches_keep_separate_state(method, family):
    """With identical cond and uncond inputs, separate per-branch state makes identical decisions in both branches;
    a shared state would not (the uncond call would see the cond call's step, residual or iteration count).
    DiT is not here: its pipeline batches both branches into one call (the batch test covers rows)."""
    with _Applied(method, family, SKIP_KNOB[method]) as (pipe, _):
        out = _call_same_branches(family, pipe, generators(0))
        per_branch = _wrapped.hit_steps(pipe)
    assert per_branch["cond"], per_branch
    assert per_branch["cond"] == per_branch["uncond"], per_branch
    assert torch.isfinite(out).all()


def test_budget_knobs_reach_each_methods_own_floor():
    """Issue #5: the knob ranges go as far as each method's rule allows (thresholds up to saturation, intervals up
    to T = 50), and a method says why its compute is bounded (quoted when a budget is unreachable)."""
    for name in METHODS:
        m, s = get_method(name), knob_search(name)
        assert m.budget_limit and m.config_id, name
        if s.knob_range is not None:
            assert s.knob_range[1] >= 1e3 and s.knob_scale, name
        else:
            assert max(s.knob_values) >= 50, name


@pytest.mark.parametrize("family", ["flux", "dit"])
def test_taylorseer_forecasts_mlps_as_the_authors_do(family):
    """On a forecast step no block MLP runs (the authors forecast attention and MLP outputs; diffusers' default
    patterns would forecast attention only). interval 2, warm-up 3, T = 10: steps 0, 1, 2, 4, 6, 8 compute."""
    pipe = _family(family)[0]
    block = _wrapped.block_modules(pipe.transformer)[0]
    counter = {"n": 0}
    handle = _wrapped.first_linear(block.ff).register_forward_hook(
        lambda *_: counter.__setitem__("n", counter["n"] + 1)
    )
    try:
        with _Applied("taylorseer", family, 2) as (_, call):
            call(generators(0), T)
    finally:
        handle.remove()
    branches = 1 if family == "dit" else 2
    assert counter["n"] == 6 * branches
