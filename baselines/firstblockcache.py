"""FirstBlockCache (ParaAttention) through diffusers' own hook, with the harness's budget knob and hit accounting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

from dpcache.diffusers_internals import FBC_HOOKS

from . import _wrapped
from .base import FAMILIES, CacheMethod

_HOOKS = FBC_HOOKS


@dataclass
class FirstBlockCacheBenchConfig:
    """FirstBlockCache as benchmarked: diffusers' `FirstBlockCacheConfig`, unchanged.

    Rule (diffusers `first_block_cache.py`): block 0 always runs; when `rel(r0_t, r0_last) = mean|r0_t − r0_last|
    / mean|r0_last|` (r0 = block-0 residual, last = last step whose tail ran) is at most `threshold`, all other
    blocks are skipped and the cached tail residual is added. No warm-up, no cap on consecutive skips.

    Args:
        threshold: the budget knob (diffusers default 0.05); larger skips more. Any negative value never skips.
            The bench searches (0, 1e3): 1e3 saturates (every step after the first skips its tail).

    Least compute (`BUDGET_LIMIT`): block 0 is the probe and runs at every step, and step 0 computes everything,
    so a sample costs at least `1 + (T − 1)·c0` full steps, c0 = block 0's share of a step: about 0.08 on the
    deeper tiny models (flux-tiny 4 double + 8 single blocks, dit-tiny 12; reports/zoo/README.md), so K ≈ 5 at
    T = 50, and K = 13 / 9 are reached (reports/BENCHMARKS.md: flux-tiny measured 13.09 / 8.87); on the first,
    4-block tiny models c0 was ≈ 0.26 (K ≥ 13.6). FLUX.1-dev: c0 = 0.0175 (benchmarks/bench_probe_share_full_scale.py).

    The relative difference is one scalar over the whole batch, so a batch of two prompts takes one joint
    decision per step (a sample's output can differ from the same sample run alone); every cache context (CFG
    branch) has its own state.

    Fidelity (issue #19; benchmarks/fidelity/firstblockcache.py, rows in results.jsonl): the authors' code is
    chengzeyi/ParaAttention @ 4de137c5 (`src/para_attn/first_block_cache/utils.py`, `diffusers_adapters/flux.py`,
    `wan.py`, run from the fetched source). Same rule (`mean|r0 − r0_prev| / mean|r0_prev|` against the last
    computed step's block-0 residual; the tail residual of image and text streams reused), same knob
    (`residual_diff_threshold` = our threshold). With their `enable_alter_cache=True` (one state per CFG branch,
    as diffusers) the final images and computed steps are identical (max |ours − theirs| = 0) on flux-tiny and
    wan-tiny, T = 10 and 50, thresholds 0, 0.05, 0.2, 1. Deliberate difference: their flux `apply_cache_on_pipe`
    defaults to one state shared by all transformer calls (FLUX.1-dev has no true CFG); with flux-tiny's true CFG
    its uncond call then compares against and reuses the cond call's residuals (their wan adapter defaults to the
    per-branch state, as we do). Effect at flux-tiny's least compute (threshold 1e3: only step 0 computes its tail, T = 50, 4 prompts):
    ours 14.75 dB vs their shared default 16.37 dB PSNR to full compute — the shared state also skips step 0's
    uncond tail, so it costs slightly less; equal-budget comparison not run (effects_fbcache.jsonl). Their
    strict `<` vs diffusers' `<=` differs only at equality. Their hunyuan_video adapter re-implements an older
    diffusers forward and needs para_attn's attention kernels, so it is not run.
    """

    threshold: float = 0.05

    @property
    def config_id(self) -> str:
        """The fixed settings besides the knob and T, as the bench's budget cache keys them."""
        return "diffusers-fbc"  # diffusers' FirstBlockCacheConfig has no setting besides the threshold

    def diffusers_config(self) -> FirstBlockCacheConfig:
        return FirstBlockCacheConfig(threshold=self.threshold)


def apply_firstblockcache(pipe: Any, config: FirstBlockCacheBenchConfig) -> None:
    """Attach diffusers' FirstBlockCache to `pipe.transformer` (`enable_cache`, or `apply_first_block_cache` on DiT)."""
    transformer = pipe.transformer
    probes = _wrapped.block_modules(transformer)
    _wrapped.apply_config(transformer, config.diffusers_config(), apply_first_block_cache)
    _wrapped.install(pipe, probes)


def remove_firstblockcache(pipe: Any) -> None:
    """Detach it; the pipeline is uncached again."""
    _wrapped.uninstall(pipe, _HOOKS)


def _apply(pipe: Any, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    apply_firstblockcache(pipe, FirstBlockCacheBenchConfig(threshold=float(knob)))


BUDGET_LIMIT = (
    "FirstBlockCache runs block 0 (its probe) at every step and all of step 0, so a sample costs at least "
    "1 + (T-1)·c0 full steps (c0 = block 0's share of a step); the threshold range (0, 1e3) saturates"
)

METHOD = CacheMethod(
    name="firstblockcache",
    families=frozenset(FAMILIES),
    knob="threshold",
    budget_limit=BUDGET_LIMIT,
    config_id=FirstBlockCacheBenchConfig().config_id,
    never_skip=-1.0,
    apply=_apply,
    remove=remove_firstblockcache,
    cache_hits=_wrapped.cache_hits,
    origin="diffusers 0.42 FirstBlockCacheConfig hook (ParaAttention's First Block Cache), wrapped unchanged; "
    "DiT gets it through apply_first_block_cache in a default cache context",
)
