"""FasterCache's attention reuse through diffusers' own hook (its CFG-branch reuse needs batched CFG: not here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from unittest import mock

from diffusers.hooks import FasterCacheConfig, apply_faster_cache
from diffusers.hooks import faster_cache as _fc
from diffusers.utils import logging as diffusers_logging

from dpcache.diffusers_internals import FASTER_CACHE_BLOCK_HOOK, FASTER_CACHE_DENOISER_HOOK

from . import _wrapped
from .base import FAMILIES, CacheMethod

_PerContextBlockHook = _wrapped.per_context_hook(_fc.FasterCacheBlockHook, _fc.FasterCacheBlockState)
_PerContextDenoiserHook = _wrapped.per_context_hook(_fc.FasterCacheDenoiserHook, _fc.FasterCacheDenoiserState)
# diffusers' spatial patterns (`^blocks.*attn`, re.search) also match Wan's cross-attention `attn2`, which the hook
# then leaves alone because the module says `is_cross_attention`; DiT's `attn1` is matched as it is.
CFG_PART = (
    "FasterCache's CFG-branch reuse (skip the unconditional half of a batched CFG call, rebuild it from the "
    "conditional half in frequency space) is not used: Flux (true CFG), Wan and HunyuanVideo run CFG as two "
    "separate transformer calls, and DiTPipeline batches [cond, uncond] (FasterCache expects [uncond, cond]) and "
    "passes `class_labels`, which FasterCache does not split. All families run with `is_guidance_distilled=True`, "
    "i.e. the attention-reuse part only."
)


@dataclass
class FasterCacheBenchConfig:
    """FasterCache (Lv et al., arXiv 2410.19355) as benchmarked: diffusers' `FasterCacheConfig`, attention part.

    Rule (diffusers `faster_cache.py`): inside `spatial_attention_timestep_skip_range`, a spatial self-attention
    computes every N-th call; at the others it returns `o_t + w·(o_t − o_{t−1})` from its last two computed
    outputs (w = `attention_weight_callback`, diffusers default 0.5).

    Args:
        spatial_attention_block_skip_range: the budget knob N (diffusers default 2); N = 1 computes every call.
        spatial_attention_timestep_skip_range: diffusers default (-1, 681).
        attention_weight: w, diffusers' default 0.5.

    The CFG part is off (see `CFG_PART`): batched CFG only, and none of the four pipelines batches it the way
    FasterCache expects. Adapter: the block and denoiser hooks keep their state per cache context (with CFG as two
    calls diffusers would otherwise extrapolate the uncond attention from the cond one); the timestep callback
    reads the scheduler. The schedule is fixed, so a batch behaves like its samples run alone.

    Compute is not strictly monotone in N: the `iteration % N` pattern counts calls, not steps inside the window,
    so at small T a larger N can skip fewer steps (flux-tiny, T = 10: N = 5 skips 4 steps per branch, N = 6 skips
    3). The harness searches `knob_values` exhaustively, so it still finds the nearest budget.

    Least compute (`METHOD.budget_limit`): only spatial self-attention is reused — MLPs, cross-attention, norms,
    embedding and output layers run at every step — and only inside the timestep window, so even N ≥ T saves at
    most the self-attention share of the in-window steps. Measured at T = 50 (N = 50): flux-tiny K ≥ 44.3, dit-tiny
    K ≥ 38.6. K = 13 and K = 9 are far beyond this part of FasterCache (its CFG part, off here, would at most
    skip part of the uncond branch).

    Fidelity (issue #19): not compared by running — the authors' code cannot run on our models. Authors:
    Vchitect/FasterCache @ 02d05ef7 (read: `scripts/opensora/fastercache_sample_opensora.py` — the patched
    STDiT3 block and model forwards — and the model list under `fastercache/models/`). Same: a spatial attention
    output is reused with a linear extrapolation `o_t + w·(o_t − o_{t−1})` from its last two computed outputs.
    Different: their schedule is hard-coded per script (Open-Sora: reuse on even steps after step 7, weight
    `w = 0.9·(step − 7)/20` growing with the step), diffusers' (ours) is every N-th call inside (−1, 681) with a
    constant w = 0.5, N the budget knob; their CFG cache (skip the uncond call on 4 of 5 steps after step 11 and
    rebuild it from the cond output's low/high-frequency FFT bias) is off here (`CFG_PART`). Why their code cannot
    run here: it patches the forwards of its own model classes only (Open-Sora STDiT3, Open-Sora-Plan, Latte,
    CogVideoX (SAT), Vchitect-XL, Mochi (genmo)); there is no diffusers-based script and no Flux, Wan,
    HunyuanVideo or DiT support in that commit.
    """

    spatial_attention_block_skip_range: int = 2
    spatial_attention_timestep_skip_range: tuple[int, int] = (-1, 681)
    attention_weight: float = 0.5

    @property
    def config_id(self) -> str:
        """The fixed settings besides the knob and T, as the bench's budget cache keys them."""
        lo, hi = self.spatial_attention_timestep_skip_range
        return f"attention-part;window{lo}-{hi};w{self.attention_weight};per-context"

    def diffusers_config(self, current_timestep_callback) -> FasterCacheConfig:
        w = self.attention_weight
        return FasterCacheConfig(
            spatial_attention_block_skip_range=self.spatial_attention_block_skip_range,
            spatial_attention_timestep_skip_range=self.spatial_attention_timestep_skip_range,
            attention_weight_callback=lambda _module: w,
            current_timestep_callback=current_timestep_callback,
            is_guidance_distilled=True,
        )


def apply_fastercache(pipe: Any, config: FasterCacheBenchConfig) -> None:
    """Attach diffusers' FasterCache hooks (state per cache context) to `pipe.transformer`."""
    transformer = pipe.transformer
    diffusers_config = config.diffusers_config(_wrapped.timestep_callback(pipe))
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "purely experimental" warning on every apply
    try:
        with (
            mock.patch.object(_fc, "FasterCacheBlockHook", _PerContextBlockHook),
            mock.patch.object(_fc, "FasterCacheDenoiserHook", _PerContextDenoiserHook),
        ):
            _wrapped.apply_config(transformer, diffusers_config, apply_faster_cache)
    finally:
        diffusers_logging.set_verbosity(level)
    probes = _wrapped.hooked_modules(transformer, [FASTER_CACHE_BLOCK_HOOK])
    if not probes:
        raise RuntimeError(f"FasterCache found no spatial attention module in {type(transformer).__name__}")
    _wrapped.install(pipe, probes)


def remove_fastercache(pipe: Any) -> None:
    """Detach it; the pipeline is uncached again."""
    _wrapped.uninstall(pipe, [FASTER_CACHE_DENOISER_HOOK, FASTER_CACHE_BLOCK_HOOK])


def _apply(pipe: Any, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    apply_fastercache(pipe, FasterCacheBenchConfig(spatial_attention_block_skip_range=int(knob)))


METHOD = CacheMethod(
    name="fastercache",
    families=frozenset(FAMILIES),
    knob="spatial_attention_block_skip_range",
    budget_limit="FasterCache (attention part) reuses spatial self-attention outputs only (MLPs, norms, embedding "
    "and output layers always run) and only inside its timestep window (-1, 681), so its saving is "
    "bounded by the self-attention share of the in-window steps; the values up to N=50 reach that bound",
    config_id=FasterCacheBenchConfig().config_id,
    never_skip=1,
    apply=_apply,
    remove=remove_fastercache,
    cache_hits=_wrapped.cache_hits,
    origin="diffusers 0.42 FasterCacheConfig hooks, wrapped; attention-reuse part only (is_guidance_distilled=True) "
    "because its CFG part needs [uncond, cond]-batched CFG; thin adapter keeps hook state per cache context",
)
