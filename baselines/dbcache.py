"""cache-dit's DBCache (Dual Block Cache) through the `cache-dit` package itself, with the harness's budget knob."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import _wrapped
from .base import FAMILIES, CacheMethod

CACHE_DIT_VERSION = (
    "1.5.3"  # pinned in pyproject's `harness` extra; installs next to torch 2.13 / diffusers 0.42.1
)
WARMUP_AT_50 = 8  # cache-dit's default warm-up (at 28–50 steps), scaled to T
_SEQUENTIAL_CFG = {"FluxPipeline", "WanPipeline", "WanImageToVideoPipeline", "HunyuanVideoPipeline"}


def _cache_dit():
    os.environ.setdefault(
        "CACHE_DIT_LOG_LEVEL", "error"
    )  # it logs its config and pattern checks on every enable
    import cache_dit

    for name in list(logging.root.manager.loggerDict):
        if name.lower().startswith("cache_dit"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return cache_dit


@dataclass
class DBCacheBenchConfig:
    """DBCache (`vipshop/cache-dit`, DBCacheConfig) as benchmarked, run by the cache-dit package (not a port).

    Rule: each step computes the first `Fn_compute_blocks` blocks; if the relative L1 change of their output
    residual against the last computed step is below `residual_diff_threshold`, the middle blocks are skipped and
    their cached residual is added; the last `Bn_compute_blocks` blocks always compute. The first
    `max_warmup_steps` steps always compute; `max_cached_steps` / `max_continuous_cached_steps` cap reuse (-1 = no
    cap, cache-dit's default).

    Fidelity: this is the authors' own code (vipshop/cache-dit, the pip package), so there is nothing to port or
    compare; the harness adds hit accounting and run resets only. Differences from its defaults (Fn = 1, warm-up
    scaled to T) are settings, listed below.

    Args:
        num_inference_steps: T (cache-dit refreshes its state after T steps).
        residual_diff_threshold: the budget knob (cache-dit default 0.08); larger skips more; `<= 0` never skips
            (cache-dit disables caching for a non-positive threshold). The bench searches (0, 1e3), which
            saturates: every step after the warm-up skips its middle blocks.
        Fn_compute_blocks: 1 (cache-dit's default 8 exceeds the tiny models' block count; the field notes' setting).
        Bn_compute_blocks: cache-dit default 0.
        max_warmup_steps: cache-dit's default is 8 (at 28–50 steps); None = `max(1, round(8·T/50))`.
        steps_computation_mask: cache-dit's own 0/1 per-step mask (1 = must compute, 0 = may use the cache) —
            a direct slot for an externally planned schedule such as DPCache's key steps; unused by the bench.

    CFG: Flux (true CFG), Wan and HunyuanVideo run cond and uncond as two calls, so `enable_separate_cfg=True`
    gives each branch its own cache (cache-dit alternates: even calls cond, odd calls uncond); DiT batches CFG in
    one call. HunyuanVideo: cache-dit caches its double- and single-stream stacks as two block groups, each with
    its own Fn/Bn. The residual difference is one scalar per batch, so a batch takes one joint decision per step.

    Least compute (`BUDGET_LIMIT`): the `max_warmup_steps` warm-up steps compute in full, and every later step
    still runs its first `Fn_compute_blocks` blocks (the probe) and last `Bn_compute_blocks`, so a sample costs at
    least `W + (T − W)·c` full steps (W = 8 at T = 50, c = share of the Fn + Bn blocks). Measured at T = 50 with
    F1B0: flux-tiny K ≥ 18.8, dit-tiny K ≥ 18.9 (c ≈ 0.26): K = 13 and K = 9 are beyond cache-dit's
    defaults there, whatever the threshold.
    """

    num_inference_steps: int
    residual_diff_threshold: float = 0.08
    Fn_compute_blocks: int = 1
    Bn_compute_blocks: int = 0
    max_warmup_steps: int | None = None
    max_cached_steps: int = -1
    max_continuous_cached_steps: int = -1
    steps_computation_mask: Sequence[int] | None = None

    @property
    def config_id(self) -> str:
        """The fixed settings besides the knob and T, as the bench's budget cache keys them."""
        warmup = f"W{WARMUP_AT_50}@50" if self.max_warmup_steps is None else f"W{self.max_warmup_steps}"
        a, b = self.max_cached_steps, self.max_continuous_cached_steps
        caps = f"caps{a}" if a == b else f"caps{a}/{b}"
        return f"cache-dit-{CACHE_DIT_VERSION};F{self.Fn_compute_blocks}B{self.Bn_compute_blocks};{warmup};{caps}"

    def cache_dit_config(self, separate_cfg: bool):
        warmup = self.max_warmup_steps
        if warmup is None:
            warmup = max(1, round(WARMUP_AT_50 * self.num_inference_steps / 50))
        return _cache_dit().DBCacheConfig(
            Fn_compute_blocks=self.Fn_compute_blocks,
            Bn_compute_blocks=self.Bn_compute_blocks,
            residual_diff_threshold=self.residual_diff_threshold,
            max_warmup_steps=warmup,
            max_cached_steps=self.max_cached_steps,
            max_continuous_cached_steps=self.max_continuous_cached_steps,
            num_inference_steps=self.num_inference_steps,
            enable_separate_cfg=separate_cfg,
            steps_computation_mask=None
            if self.steps_computation_mask is None
            else list(self.steps_computation_mask),
        )


_MISSING = object()


class _Snapshot:
    """What cache-dit changes on the transformer and `disable_cache` leaves behind (checked with 1.5.3): an
    instance `forward` (its patch functor), `_is_patched`, re-registered block lists (which moves them to the end
    of `named_children`, so a later diffusers hook takes the wrong head block), extra children (DiT's `_norm1_emb`)
    and statistics attributes on the block lists. Numerically the model is uncached again; structurally it is not."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.modules = dict(transformer._modules)
        self.attrs = {attr: vars(transformer).get(attr, _MISSING) for attr in ("forward", "_is_patched")}
        self.child_attrs = {name: set(vars(child)) for name, child in self.modules.items()}

    def restore(self, transformer: torch.nn.Module) -> None:
        transformer._modules.clear()
        transformer._modules.update(self.modules)
        for (
            attr,
            value,
        ) in self.attrs.items():  # an earlier diffusers hook may have left an instance `forward`
            if value is not _MISSING:
                setattr(transformer, attr, value)
            elif attr in vars(transformer):
                delattr(transformer, attr)
        for name, child in self.modules.items():
            for attr in set(vars(child)) - self.child_attrs[name]:
                delattr(child, attr)


_SNAPSHOTS: dict[int, _Snapshot] = {}


def apply_dbcache(pipe: Any, config: DBCacheBenchConfig) -> None:
    """`cache_dit.enable_cache(pipe, cache_config=...)`, plus the harness's hit accounting."""
    transformer = pipe.transformer
    probes = _wrapped.block_modules(transformer)  # before cache-dit re-registers the block lists
    separate_cfg = type(pipe).__name__ in _SEQUENTIAL_CFG
    _SNAPSHOTS[id(transformer)] = _Snapshot(transformer)
    _cache_dit().enable_cache(pipe, cache_config=config.cache_dit_config(separate_cfg))
    _wrapped.install(pipe, probes)


def remove_dbcache(pipe: Any) -> None:
    """`cache_dit.disable_cache(pipe)`, then undo what it leaves on the transformer; the pipeline is uncached."""
    _wrapped.uninstall(pipe)
    _cache_dit().disable_cache(pipe)
    snapshot = _SNAPSHOTS.pop(id(pipe.transformer), None)
    if snapshot is not None:
        snapshot.restore(pipe.transformer)


def _apply(pipe: Any, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    apply_dbcache(pipe, DBCacheBenchConfig(num_steps, residual_diff_threshold=float(knob)))


BUDGET_LIMIT = (
    "DBCache computes its max_warmup_steps warm-up steps in full (cache-dit default 8 at 50 steps) and still runs "
    "the Fn probe blocks (+ Bn tail blocks) at every later step, so a sample costs at least W + (T-W)·c full steps "
    "(c = share of those blocks); the threshold range (0, 1e3) saturates"
)

METHOD = CacheMethod(
    name="dbcache",
    families=frozenset(FAMILIES),
    knob="residual_diff_threshold",
    budget_limit=BUDGET_LIMIT,
    config_id=DBCacheBenchConfig(50).config_id,
    never_skip=0.0,
    apply=_apply,
    remove=remove_dbcache,
    cache_hits=_wrapped.cache_hits,
    origin=f"cache-dit {CACHE_DIT_VERSION} (pip package) DBCache, used as is (F1B0: Fn=1 for the tiny models, "
    "warm-up scaled to T); harness adds only hit accounting and run resets",
)
