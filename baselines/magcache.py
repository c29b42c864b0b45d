"""MagCache through diffusers' own hook, with magnitude ratios calibrated by diffusers' calibration mode."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffusers.hooks import HookRegistry, MagCacheConfig, apply_mag_cache
from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK

from . import _wrapped
from .base import FAMILIES, CacheMethod, Calibration, register

_HOOKS = (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK)


@dataclass
class MagCacheBenchConfig:
    """MagCache (Ma et al., `Zehong-Ma/MagCache`) as benchmarked: diffusers' `MagCacheConfig`.

    Rule (diffusers `mag_cache.py`): after the first `round(retention_ratio · T)` steps, each step multiplies the
    accumulated ratio by its calibrated magnitude ratio `γ_t` and adds `|1 − Πγ|` to the error; while the error is
    at most `threshold` and at most `max_skip_steps` steps were skipped in a row, the whole block stack is skipped
    and the last residual reused; otherwise it computes and the accumulators reset.

    Args:
        num_inference_steps: T of the pipeline (the ratios are interpolated to it).
        mag_ratios: `γ_t` per step, from `calibrate_magcache` (per model; `FLUX_MAG_RATIOS` for FLUX.1-dev).
        threshold: the budget knob (diffusers default 0.06); larger skips more; any negative value never skips.
        max_skip_steps: diffusers default 3. retention_ratio: diffusers default 0.2.

    The schedule depends only on the calibrated ratios, not on the sample, so a batch behaves like its samples
    run alone; every cache context (CFG branch) has its own accumulators and residual.
    """

    num_inference_steps: int
    mag_ratios: Sequence[float]
    threshold: float = 0.06
    max_skip_steps: int = 3
    retention_ratio: float = 0.2

    def diffusers_config(self) -> MagCacheConfig:
        return MagCacheConfig(
            threshold=self.threshold, max_skip_steps=self.max_skip_steps, retention_ratio=self.retention_ratio,
            num_inference_steps=self.num_inference_steps, mag_ratios=list(self.mag_ratios),
        )


def apply_magcache(pipe: Any, config: MagCacheBenchConfig) -> None:
    """Attach diffusers' MagCache to `pipe.transformer` (`enable_cache`, or `apply_mag_cache` on DiT)."""
    transformer = pipe.transformer
    probes = _wrapped.block_modules(transformer)
    _wrapped.apply_config(transformer, config.diffusers_config(), apply_mag_cache)
    _wrapped.install(pipe, probes)


def remove_magcache(pipe: Any) -> None:
    """Detach it; the pipeline is uncached again."""
    _wrapped.uninstall(pipe, _HOOKS)


def calibrate_magcache(pipe: Any, num_steps: int, run_prompts) -> dict:
    """diffusers' own calibration mode (`MagCacheConfig(calibrate=True)`, no skipping) over `run_prompts()`.

    The tail hook's per-step ratio (mean over tokens of ‖r_t‖ / ‖r_{t−1}‖ of the stack residual) is recorded as
    diffusers computes it, per cache context; the ratios are averaged over prompts and contexts (diffusers takes
    one list for all contexts).
    """
    transformer = pipe.transformer
    probes = _wrapped.block_modules(transformer)
    _wrapped.apply_config(transformer, MagCacheConfig(calibrate=True, num_inference_steps=num_steps), apply_mag_cache)
    _wrapped.install(pipe, probes)
    tail = probes[-1]
    hook = HookRegistry.check_if_exists_or_initialize(tail).get_hook(_MAG_CACHE_BLOCK_HOOK)
    runs: dict[str, list[float]] = {}
    original = hook._perform_calibration_step

    def record(state, residual):
        original(state, residual)
        runs.setdefault(hook.state_manager.context.name, []).append(float(state.calibration_ratios[-1]))

    hook._perform_calibration_step = record
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # diffusers prints the ratios at the end of each run
            run_prompts()
    finally:
        remove_magcache(pipe)
    per_step: list[list[float]] = [[] for _ in range(num_steps)]
    for ratios in runs.values():
        for i, r in enumerate(ratios):
            per_step[i % num_steps].append(r)
    if any(not v for v in per_step):
        raise RuntimeError(f"MagCache calibration saw fewer than {num_steps} steps per run")
    return {"mag_ratios": [sum(v) / len(v) for v in per_step], "num_steps": num_steps,
            "contexts": sorted(runs), "source": "diffusers MagCacheConfig(calibrate=True)"}


def _calibrate(pipe: Any, calibration: Calibration) -> dict:
    path = calibration.out_dir / f"magcache_{calibration.model_name}_T{calibration.num_steps}.json"
    if path.exists():
        return json.loads(path.read_text())
    artifacts = calibrate_magcache(pipe, calibration.num_steps, calibration.run_prompts)
    artifacts["model"] = calibration.model_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(artifacts, indent=1))
    return artifacts


def _apply(pipe: Any, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    if not artifacts or "mag_ratios" not in artifacts:
        raise ValueError("MagCache needs calibrated `mag_ratios` (run the method's calibrate first)")
    apply_magcache(pipe, MagCacheBenchConfig(num_steps, artifacts["mag_ratios"], threshold=float(knob)))


METHOD = register(CacheMethod(
    name="magcache",
    families=frozenset(FAMILIES),
    knob="threshold",
    knob_range=(0.0, 1.0),
    compute_grows_with_knob=False,
    never_skip=-1.0,
    apply=_apply,
    remove=remove_magcache,
    cache_hits=_wrapped.cache_hits,
    calibrate=_calibrate,
    origin="diffusers 0.42 MagCacheConfig hook (Zehong-Ma/MagCache), wrapped unchanged; mag_ratios per model from "
           "diffusers' calibrate=True mode; DiT through apply_mag_cache",
))
