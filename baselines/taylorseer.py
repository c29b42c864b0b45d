"""TaylorSeer through diffusers' own hook (fixed interval, Taylor forecast of attention outputs), with the bench knob."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache
from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

from . import _wrapped
from .base import FAMILIES, CacheMethod, register

# diffusers' default patterns (`^blocks.*attn`, …) are matched with re.fullmatch, so they miss attention modules
# named `attn1` / `attn2` (Wan's blocks, DiT's BasicTransformerBlock): the same patterns, with an optional digit.
ATTENTION_IDENTIFIERS = (
    r"^blocks.*attn\d?",
    r"^transformer_blocks.*attn\d?",
    r"^single_transformer_blocks.*attn\d?",
)


@dataclass
class TaylorSeerBenchConfig:
    """TaylorSeer (Liu et al., arXiv 2503.06923) as benchmarked: diffusers' `TaylorSeerCacheConfig`.

    Rule (diffusers `taylorseer_cache.py`): steps `< disable_cache_before_step` compute; afterwards a step computes
    when `(step − disable_cache_before_step − 1) % cache_interval == 0`; at the other steps every hooked attention
    module returns its order-`max_order` Taylor forecast (finite differences over the previous computed steps)
    instead of running. MLPs and norms always run — diffusers forecasts attention outputs only.

    Args:
        cache_interval: the budget knob N (diffusers default 5); N = 1 computes every step (never skips).
        disable_cache_before_step: warm-up steps, all computed (diffusers default 3).
        max_order: Taylor order; 2 as in the paper's reported FLUX settings (N=4/O=2, N=7/O=2); diffusers' default is 1.
        taylor_factors_dtype: storage dtype of the factors; float32 here (diffusers' default bf16 would add a
            rounding error of its own to these fp32 models).

    Differences from diffusers' defaults, both stated above: the attention patterns also match `attn1`/`attn2`
    (`ATTENTION_IDENTIFIERS`), and `max_order` / dtype. State is per cache context and per module; the schedule
    is fixed, so a batch behaves like its samples run alone.
    """

    cache_interval: int = 5
    disable_cache_before_step: int = 3
    max_order: int = 2
    taylor_factors_dtype: torch.dtype = torch.float32

    def diffusers_config(self) -> TaylorSeerCacheConfig:
        return TaylorSeerCacheConfig(
            cache_interval=self.cache_interval,
            disable_cache_before_step=self.disable_cache_before_step,
            max_order=self.max_order,
            taylor_factors_dtype=self.taylor_factors_dtype,
            cache_identifiers=list(ATTENTION_IDENTIFIERS),
        )


def apply_taylorseer(pipe: Any, config: TaylorSeerBenchConfig) -> None:
    """Attach diffusers' TaylorSeer hooks to `pipe.transformer` (`enable_cache`, or `apply_taylorseer_cache` on DiT)."""
    transformer = pipe.transformer
    _wrapped.apply_config(transformer, config.diffusers_config(), apply_taylorseer_cache)
    probes = _wrapped.hooked_modules(transformer, [_TAYLORSEER_CACHE_HOOK])
    if not probes:
        raise RuntimeError(f"TaylorSeer found no attention module in {type(transformer).__name__}")
    _wrapped.install(pipe, probes)


def remove_taylorseer(pipe: Any) -> None:
    """Detach it; the pipeline is uncached again."""
    _wrapped.uninstall(pipe, [_TAYLORSEER_CACHE_HOOK])


def _apply(pipe: Any, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    apply_taylorseer(pipe, TaylorSeerBenchConfig(cache_interval=int(knob)))


METHOD = register(CacheMethod(
    name="taylorseer",
    families=frozenset(FAMILIES),
    knob="cache_interval",
    knob_values=(1, 2, 3, 4, 5, 6, 7, 8),
    compute_grows_with_knob=False,
    never_skip=1,
    apply=_apply,
    remove=remove_taylorseer,
    cache_hits=_wrapped.cache_hits,
    origin="diffusers 0.42 TaylorSeerCacheConfig hook, wrapped; attention patterns widened to attn1/attn2, "
           "max_order 2 (paper), float32 factors; DiT through apply_taylorseer_cache in a default cache context",
))
