"""MagCache: our wrapper of diffusers' hook (baselines/magcache.py) next to Zehong-Ma/MagCache's FLUX forward."""

from __future__ import annotations

import ast
import contextlib
import io
from functools import partial

import numpy as np

from .common import AuthorsSource, Comparison, Model, Pair, authors_forward, compare_pair, load_functions

REPO = "Zehong-Ma/MagCache"
SCRIPT = "MagCache4FLUX/magcache_flux.py"
MODELS = ("flux-tiny",)
KNOB = "threshold"
VALUES = (-1.0, 0.06, 0.24)


def _their_ratios(model: Model, calibration, prompt, seed: int, steps: int) -> list[float]:
    """The authors' calibration forward on one sample: the ratios it prints, averaged over CFG branches."""
    state = {"cnt": 0, "num_steps": steps, "norm_ratio": [], "norm_std": [], "cos_dis": []}
    buf = io.StringIO()
    with (
        contextlib.redirect_stdout(buf),
        authors_forward(model.pipe.transformer, calibration, state, model.branches),
    ):
        model.sample(prompt, seed, steps)
    lines = buf.getvalue().splitlines()
    lists = [ast.literal_eval(lines[i + 1]) for i, x in enumerate(lines) if x.strip() == "norm ratio"]
    return [1.0, *list(np.mean(np.array(lists, dtype=float), axis=0))]


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """The authors' FLUX setting K = 5, R = 0.1, both fed the same ratios (diffusers' calibration on the first
    calibration prompt); the authors' calibration on that prompt is compared with diffusers' (`extra`)."""
    from baselines.magcache import MagCacheBenchConfig, apply_magcache, calibrate_magcache, remove_magcache

    fns = load_functions(src.read(SCRIPT), ("magcache_forward", "magcache_calibration"), SCRIPT)
    cal_prompt = model.spec.calibration_prompts[0]
    ours_cal = calibrate_magcache(model.pipe, steps, lambda: model.sample(cal_prompt, 42, steps))[
        "mag_ratios"
    ]
    theirs_cal = _their_ratios(model, fns["magcache_calibration"], cal_prompt, 42, steps)
    cal_diff = float(np.max(np.abs(np.array(ours_cal[1:]) - np.array(theirs_cal[1:]))))
    commit, rows = src.commit(), []
    # the authors' FLUX.1-dev script always computes the step nearest step 11 of 28 (a fix for that model's
    # trajectory, not part of the method); diffusers' hook does not, so at such T the two differ on purpose
    forced = [c for c in range(steps) if round(c * 27 / max(steps - 1, 1)) == 11]
    deliberate = {"deliberate": f"authors' script forces step {forced[0]}"} if forced else {}
    for value in values:
        for prompt, seed in zip(prompts, seeds, strict=True):
            state = {
                "cnt": 0,
                "num_steps": steps,
                "mag_ratios": np.array(ours_cal),
                "K": 5,
                "magcache_thresh": value,
                "retention_ratio": 0.1,
                "accumulated_ratio": 1,
                "accumulated_err": 0,
                "accumulated_steps": 0,
                "previous_residual": None,
            }

            pair = Pair(
                "magcache",
                REPO,
                commit,
                KNOB,
                value,
                partial(
                    apply_magcache, model.pipe, MagCacheBenchConfig.for_family("flux", steps, ours_cal, value)
                ),
                partial(remove_magcache, model.pipe),
                fns["magcache_forward"],
                state,
                extra={"calibration_ratio_max_abs": cal_diff, **deliberate},
            )
            rows.append(compare_pair(model, pair, steps, prompt, seed))
    return rows
