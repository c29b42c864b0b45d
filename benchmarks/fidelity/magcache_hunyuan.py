"""MagCache on hunyuan-video-tiny: our wrapper of diffusers' hook (baselines/magcache.py) next to Zehong-Ma/MagCache's HunyuanVideo forward on the official HYVideoDiffusionTransformer."""

from __future__ import annotations

from functools import partial

import numpy as np

from .common import AuthorsSource, Comparison, Model, Pair
from .hunyuan_official import compare_hunyuan, hunyuan_source, load_official, load_script, uncached_difference

REPO = "Zehong-Ma/MagCache"
SCRIPT = "MagCache4HunyuanVideo/magcache_sample_video.py"
MODELS = ("hunyuan-video-tiny",)
KNOB = "threshold"
VALUES = (-1.0, 0.06, 0.12, 0.24)


def authors_state(steps: int, thresh: float, k: int, r: float, ratios: list[float]) -> dict:
    """The class attributes their `main` sets (E024K6R02: K 6, retention 0.2; ratios fed, one per step)."""
    return {
        "cnt": 0,
        "num_steps": steps,
        "magcache_thresh": thresh,
        "K": k,
        "retention_ratio": r,
        "residual_cache": None,
        "mag_ratios": np.array(ratios),
        "accumulated_ratio": 1,
        "accumulated_err": 0,
        "accumulated_steps": 0,
    }


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Their state per CFG branch, then the official pipeline's batched CFG (the rule depends on the step and the
    ratios only, so both drivings must equal our per-context hook)."""
    return compare_mode(src, model, steps, values, prompts, seeds, False) + compare_mode(
        src, model, steps, values, prompts, seeds, True
    )


def compare_mode(
    src: AuthorsSource, model: Model, steps: int, values, prompts, seeds, batched: bool = False
) -> list[Comparison]:
    """Our registered method (HunyuanVideo K = 6, R = 0.2, diffusers' calibration on the first calibration
    prompt) vs their `magcache_forward` fed the same ratios, same threshold."""
    from baselines.base import get_method
    from baselines.magcache import FAMILY_DEFAULTS, calibrate_magcache

    hy_src = hunyuan_source(src)
    hy, official = load_official(model, hy_src)
    forward = load_script(src.read(SCRIPT), ("magcache_forward",), SCRIPT, hy)["magcache_forward"]
    cal_prompt = model.spec.calibration_prompts[0]
    ratios = calibrate_magcache(model.pipe, steps, lambda: model.sample(cal_prompt, 42, steps))["mag_ratios"]
    k, r = FAMILY_DEFAULTS["hunyuan-video"]
    method = get_method("magcache")
    artifacts = {"mag_ratios": ratios}
    floors = {
        s: uncached_difference(model, hy, official, p, s, steps, batched) for p, s in zip(prompts, seeds)
    }
    commit, rows = src.commit(), []
    for value in values:
        for prompt, seed in zip(prompts, seeds, strict=True):
            pair = Pair(
                "magcache",
                REPO,
                commit,
                KNOB,
                value,
                partial(method.apply, model.pipe, value, steps, artifacts),
                partial(method.remove, model.pipe),
                forward,
                authors_state(steps, value, k, r, ratios),
                extra={"K_R": [k, r], "official_model": f"{hy_src.repo}@{hy_src.commit()}"},
            )
            note = f"authors: K {k}, R {r}, same ratios; " + (
                "theirs: batched CFG, one state" if batched else "theirs: one state per CFG branch"
            )
            rows.append(
                compare_hunyuan(model, hy, official, pair, steps, prompt, seed, floors[seed], note, batched)
            )
    return rows
