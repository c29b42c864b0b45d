"""The DPCache hook against the uncached pipeline, on tiny random-weight pipelines of all four families."""

from __future__ import annotations

import pytest
import torch
from tiny_pipelines import FAMILIES, PROMPT_PAIRS, generators
from tiny_pipelines import build_family as _family

from dpcache import DPCacheConfig, ScheduleMismatchError, apply_dpcache, dpcache_stats, remove_dpcache
from dpcache.adapters import block_layout

T = 10
SCHEDULE = [0, 1, 2, 5, 8]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param, *_family(request.param)


class _ComputeCounter:
    """Counts how often the first block really computes (its first submodule runs only then)."""

    def __init__(self, transformer):
        block = block_layout(transformer).blocks[0]
        self.sub = next(iter(block.children()))
        self.n = 0
        self.handle = self.sub.register_forward_hook(self._hit)

    def _hit(self, *args):
        self.n += 1

    def close(self):
        self.handle.remove()


def test_full_budget_equals_uncached(family):
    _name, pipe, call = family
    ref = call(generators(0), T)
    apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, schedule=list(range(T))))
    try:
        out = call(generators(0), T)
    finally:
        remove_dpcache(pipe)
    assert torch.allclose(out, ref, atol=1e-6, rtol=0), (out - ref).abs().max()
    assert torch.equal(call(generators(0), T), ref), "remove_dpcache must restore the uncached model"


def test_skipped_steps_run_no_block(family):
    name, pipe, call = family
    ref = call(generators(0), T)
    counter = _ComputeCounter(pipe.transformer)
    apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, schedule=SCHEDULE))
    try:
        out = call(generators(0), T)
        stats = dpcache_stats(pipe)
    finally:
        remove_dpcache(pipe)
        counter.close()
    branches = len(stats)
    assert branches == (1 if name == "dit" else 2), stats  # CFG: one batched call (DiT) or cond + uncond
    for run in stats.values():
        assert run.computed_steps == SCHEDULE
        assert run.cache_hits == T - len(SCHEDULE)
    assert counter.n == len(SCHEDULE) * branches
    assert not torch.allclose(out, ref, atol=1e-6), "predicted steps must change the output"
    assert torch.isfinite(out).all()


def test_cfg_branches_keep_separate_state(family):
    name, pipe, call = family
    apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, schedule=SCHEDULE))
    try:
        call(generators(0), T)  # a shared state would see each key step twice and refuse it
        hook = pipe.transformer._diffusers_hook.get_hook("dpcache_step_hook")
        stats = dpcache_stats(pipe)
    finally:
        remove_dpcache(pipe)
    if name != "dit":
        assert set(stats) == {"cond", "uncond"}
        assert stats["cond"] is not stats["uncond"]
    assert hook is not None


def test_batch_of_two_matches_single_samples(family):
    name, pipe, call = family
    prompts = PROMPT_PAIRS[name]
    apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, schedule=SCHEDULE))
    try:
        both = call(generators(0, 1), T, prompts)
        first = call(generators(0), T, prompts[:1])
        second = call(generators(1), T, prompts[1:])
    finally:
        remove_dpcache(pipe)
    assert torch.allclose(both[0], first[0], atol=1e-5), (both[0] - first[0]).abs().max()
    assert torch.allclose(both[1], second[0], atol=1e-5), (both[1] - second[0]).abs().max()


def test_consecutive_calls_identical(family):
    _name, pipe, call = family
    apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, schedule=SCHEDULE))
    try:
        a = call(generators(0), T)
        b = call(generators(0), T)
    finally:
        remove_dpcache(pipe)
    assert torch.equal(a, b)


@pytest.mark.parametrize("steps", [T - 3, T + 3])
def test_other_step_count_raises(family, steps):
    _name, pipe, call = family
    apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, schedule=SCHEDULE))
    try:
        with pytest.raises(ScheduleMismatchError, match=f"planned for T={T}"):
            call(generators(0), steps)
        # the failed call leaves no state behind: a correct call still works
        assert torch.isfinite(call(generators(0), T)).all()
    finally:
        remove_dpcache(pipe)


def test_transformer_only_attachment_reports_mismatch():
    pipe, call = _family("flux")
    apply_dpcache(pipe.transformer, DPCacheConfig(num_inference_steps=T, schedule=SCHEDULE))
    try:
        assert torch.isfinite(call(generators(0), T)).all()
        assert dpcache_stats(pipe.transformer)["cond"].computed_steps == SCHEDULE
        with pytest.raises(ScheduleMismatchError):
            call(generators(0), T - 2)
        with pytest.raises(ScheduleMismatchError):
            call(generators(0), T + 2)
    finally:
        remove_dpcache(pipe.transformer)


def test_bad_schedules_are_refused():
    from dpcache import DPCacheError

    with pytest.raises(DPCacheError, match="start at step 0"):
        DPCacheConfig(num_inference_steps=T, schedule=[1, 2, 3]).resolve_schedule()
    with pytest.raises(DPCacheError, match="strictly increasing"):
        DPCacheConfig(num_inference_steps=T, schedule=[0, 3, 2]).resolve_schedule()
    with pytest.raises(DPCacheError, match="below T"):
        DPCacheConfig(num_inference_steps=T, schedule=[0, T]).resolve_schedule()
    with pytest.raises(DPCacheError, match="either"):
        DPCacheConfig(num_inference_steps=T).resolve_schedule()
