"""MagCache through diffusers' own hook, with magnitude ratios calibrated by diffusers' calibration mode."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffusers.hooks import HookRegistry, MagCacheConfig, apply_mag_cache

from dpcache.diffusers_internals import MAG_CACHE_BLOCK_HOOK, MAG_CACHE_HOOKS

from . import _wrapped
from .base import FAMILIES, CacheMethod, Calibration

_HOOKS = MAG_CACHE_HOOKS

# Per family: (max_skip_steps K, retention_ratio R) from the authors' scripts (`Zehong-Ma/MagCache`); their
# thresholds are what the bench searches.
FAMILY_DEFAULTS = {
    "flux": (5, 0.1),  # MagCache4FLUX/magcache_flux.py: E024K5R01 (their FLUX.1-dev setting)
    "hunyuan-video": (6, 0.2),  # MagCache4HunyuanVideo/magcache_sample_video.py: E024K6R02
    # MagCache4Wan2.1/README.md's T2V-1.3B command and the paper's 'fast' eval: E012K4R02 (the script's CLI
    # default is K = 2, its 'slow' eval; 14B: K = 6); checked against its forward (benchmarks/fidelity/magcache_wan.py)
    "wan": (4, 0.2),
    "dit": (5, 0.1),  # no authors' DiT script: FLUX's image settings (as DiCache here)
}
_FAMILY_OF = {
    "FluxTransformer2DModel": "flux",
    "WanTransformer3DModel": "wan",
    "HunyuanVideoTransformer3DModel": "hunyuan-video",
    "DiTTransformer2DModel": "dit",
}


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
            The bench searches (0, 1e3), which saturates: every step the caps allow is skipped.
        max_skip_steps (K) / retention_ratio (R): diffusers' defaults 3 / 0.2; the bench uses the authors' setting
            for the model family (`FAMILY_DEFAULTS`, `for_family`): FLUX K = 5, R = 0.1 (their FLUX.1-dev script,
            "E024K5R01"; it also forces the 11th of 28 steps, which diffusers' hook does not), HunyuanVideo K = 6,
            R = 0.2, Wan K = 4, R = 0.2 (their Wan2.1 T2V-1.3B command, "E012K4R02"), DiT FLUX's (no authors' DiT script).

    Least compute (`BUDGET_LIMIT`): the first `W = round(R·T)` steps compute, then at most K skips follow each
    computed step, so a sample costs at least `W + floor((T − W)/(K + 1))` full steps (plus the embedding and
    output layers, which run at skipped steps too) whatever the threshold — at T = 50: 5 + 7 = 12 for FLUX/DiT
    (measured: flux-tiny K ≥ 12.3, threshold 0.23 → 13.3; dit-tiny K ≥ 12.5, reached at saturation: K = 13 is
    reached, K = 9 is not), 10 + 8 = 18 for Wan (K = 4, R = 0.2; diffusers' defaults 3 / 0.2 give 20, and
    gave flux-tiny K ≥ 20.3).

    Fidelity (benchmarks/fidelity/magcache.py, `reports/competitors.md`): against Zehong-Ma/MagCache @ df81cb1
    (`MagCache4FLUX/magcache_flux.py`, its forward loaded at run time, fed the same ratios) on flux-tiny, T = 10,
    thresholds −1 / 0.06 / 0.24: identical images and computed steps (max |ours − theirs| = 0); the authors'
    calibration forward and diffusers' calibration give ratios within 2.6e-6. Kept on purpose: the authors' FLUX
    script also forces the step nearest the 11th of 28 (a FLUX.1-dev trajectory fix, step 20 at T = 50), which
    diffusers' hook does not; at T = 50, threshold 0.23 (≈ K = 13) that one extra step makes ours vs theirs
    41.9 dB PSNR apart (their run computes 14 steps, ours 13).

    Wan (benchmarks/fidelity/magcache_wan.py): against `MagCache4Wan2.1/magcache_generate.py` @ df81cb1, its
    `magcache_forward` bound to the official WanModel (Wan-Video/Wan2.1 @ 9737cba) carrying wan-tiny's weights,
    same pipeline and seeds; T = 50, thresholds −1 / 0.06 / 0.12 / 0.24, 2 prompts, both fed diffusers' ratios:
    computed steps of both CFG branches identical, max |ours − theirs| ≤ 3.1e-6 (the uncached floor is 2.3e-6).
    Their `magcache_calibration` and diffusers' calibration agree to 4.1e-6 (theirs rounds to 5 decimals). Fixed:
    Wan ran diffusers' K = 3 (no authors' Wan setting); now K = 4, R = 0.2, their T2V-1.3B command (effect on
    wan-tiny, 4 prompts, effects_wan.jsonl: threshold 0.12 at the same K = 21.5 34.0 → 32.5 dB, the least compute
    20.6 → 18.6 steps at 32.5 → 30.3 dB; K = 13 / 9 stay out of reach either way). Kept on purpose: their Wan
    script keeps one ratio list per CFG branch, diffusers' hook one for both (ours: the branches' mean; the lists
    differ by ≤ 4.9e-3 on wan-tiny); fed their own per-branch calibration their unconditional branch skips other
    steps at threshold 0.06 (max |d| 0.72), identical schedules at 0.12 / 0.24. Measured (their forward, 4
    prompts, `python -m benchmarks.fidelity.magcache_wan`): at 0.06 (24 full steps) per-branch lists 21.7 dB vs
    the mean 36.1 dB against full compute (the branches fall out of step), equal at 0.12 / 0.24. Their
    retention `int(2T·R)` over both branches' calls equals diffusers' `round(R·T)` whenever 2T·R is even (T = 10,
    50); their skip test is `err < threshold`, diffusers' `≤` (the same unless equal).

    HunyuanVideo (benchmarks/fidelity/magcache_hunyuan.py): against `MagCache4HunyuanVideo/magcache_sample_video.py`
    @ df81cb1, its `magcache_forward` bound to the official `HYVideoDiffusionTransformer` (Tencent/HunyuanVideo
    @ fa14b00) carrying hunyuan-video-tiny's weights, driven by our pipeline (`hunyuan_official.py`), K = 6,
    R = 0.2 (their E024K6R02), both fed diffusers' calibration, T = 50, thresholds −1 / 0.06 / 0.12 / 0.24,
    2 prompts, their state per CFG branch and, as the official pipeline runs true CFG, batched [uncond, cond]
    with one state: computed steps of both branches identical, max |ours − theirs| ≤ 9.5e-6 (uncached floor
    5.1e-6). No difference kept.

    The schedule depends only on the calibrated ratios, not on the sample, so a batch behaves like its samples
    run alone; every cache context (CFG branch) has its own accumulators and residual.
    """

    num_inference_steps: int
    mag_ratios: Sequence[float]
    threshold: float = 0.06
    max_skip_steps: int = 3
    retention_ratio: float = 0.2

    @classmethod
    def for_family(
        cls, family: str, num_inference_steps: int, mag_ratios: Sequence[float], threshold: float = 0.06
    ) -> MagCacheBenchConfig:
        """The authors' K and R for a model family (`FAMILY_DEFAULTS`)."""
        k, r = FAMILY_DEFAULTS[family]
        return cls(num_inference_steps, mag_ratios, threshold, max_skip_steps=k, retention_ratio=r)

    def diffusers_config(self) -> MagCacheConfig:
        return MagCacheConfig(
            threshold=self.threshold,
            max_skip_steps=self.max_skip_steps,
            retention_ratio=self.retention_ratio,
            num_inference_steps=self.num_inference_steps,
            mag_ratios=list(self.mag_ratios),
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
    _wrapped.apply_config(
        transformer, MagCacheConfig(calibrate=True, num_inference_steps=num_steps), apply_mag_cache
    )
    _wrapped.install(pipe, probes)
    tail = probes[-1]
    hook = HookRegistry.check_if_exists_or_initialize(tail).get_hook(MAG_CACHE_BLOCK_HOOK)
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
    return {
        "mag_ratios": [sum(v) / len(v) for v in per_step],
        "num_steps": num_steps,
        "contexts": sorted(runs),
        "source": "diffusers MagCacheConfig(calibrate=True)",
    }


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
    family = _FAMILY_OF.get(type(pipe.transformer).__name__, "wan")
    apply_magcache(
        pipe, MagCacheBenchConfig.for_family(family, num_steps, artifacts["mag_ratios"], float(knob))
    )


BUDGET_LIMIT = (
    "MagCache computes its first round(retention_ratio·T) steps and at least one step in every max_skip_steps+1 "
    "after them (the authors' FLUX/DiT setting K=5, R=0.1: 12 of 50 steps; their Wan K=4, R=0.2: 18 of 50), "
    "whatever the threshold; the threshold range (0, 1e3) saturates"
)

METHOD = CacheMethod(
    name="magcache",
    families=frozenset(FAMILIES),
    knob="threshold",
    budget_limit=BUDGET_LIMIT,
    config_id="family-KR:" + ",".join(f"{f}={k}/{r}" for f, (k, r) in sorted(FAMILY_DEFAULTS.items())),
    never_skip=-1.0,
    apply=_apply,
    remove=remove_magcache,
    cache_hits=_wrapped.cache_hits,
    calibrate=_calibrate,
    origin="diffusers 0.42 MagCacheConfig hook (Zehong-Ma/MagCache), wrapped unchanged; mag_ratios per model from "
    "diffusers' calibrate=True mode; K/R from the authors' per-model scripts (FLUX 5/0.1, HunyuanVideo 6/0.2; "
    "Wan 4/0.2 (their T2V-1.3B command); DiT FLUX's); DiT through apply_mag_cache",
)
