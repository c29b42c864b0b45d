"""MagCache on wan-tiny: our wrapper of diffusers' hook (baselines/magcache.py) next to Zehong-Ma/MagCache's Wan2.1 forward on the official WanModel."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from functools import partial

import numpy as np
import torch

from .common import AuthorsSource, Comparison, Model, Pair
from .wan_official import compare_wan, driving, load_official, load_script, uncached_difference, wan_source

REPO = "Zehong-Ma/MagCache"
SCRIPT = "MagCache4Wan2.1/magcache_generate.py"
MODELS = ("wan-tiny",)
KNOB = "threshold"
VALUES = (-1.0, 0.06, 0.12, 0.24)
# the per-branch ratio lists of the authors' calibration kept apart from diffusers' single list (ours: the mean)
PER_BRANCH = (
    "diffusers' hook takes one ratio list for both CFG branches (ours: the branches' mean); the authors' Wan "
    "script keeps one per branch"
)


def their_ratios(
    model: Model, official: torch.nn.Module, calibration, prompt, seed: int, steps: int
) -> list[list[float]]:
    """The authors' `magcache_calibration` forward on one sample: per CFG branch (conditional, unconditional) the
    ratio per step, 1.0 first (the padding their script puts before the calibrated list). It writes json files to
    the working directory: run in a temporary one."""
    state = {
        "cnt": 0,
        "num_steps": 2 * steps,
        "norm_ratio": [],
        "norm_std": [],
        "cos_dis": [],
        "residual_cache": [None, None],
    }
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        os.chdir(tmp)
        try:
            with driving(model, official, calibration, state):
                model.sample(prompt, seed, steps)
        finally:
            os.chdir(cwd)
    r = state["norm_ratio"]  # from call 2 on, conditional / unconditional alternating
    return [[1.0, *r[0::2]], [1.0, *r[1::2]]]


def authors_state(steps: int, thresh: float, k: int, r: float, ratios: list[list[float]]) -> dict:
    """The class attributes their t2v `generate` sets with `--use_magcache` (ratios interleaved per call)."""
    return {
        "cnt": 0,
        "num_steps": 2 * steps,
        "magcache_thresh": thresh,
        "K": k,
        "accumulated_err": [0.0, 0.0],
        "accumulated_steps": [0, 0],
        "accumulated_ratio": [1.0, 1.0],
        "retention_ratio": r,
        "residual_cache": [None, None],
        "mag_ratios": np.stack([np.array(ratios[0]), np.array(ratios[1])], axis=1).reshape(-1),
    }


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Our registered method (Wan: the family's K / R, diffusers' calibration on the first calibration prompt)
    vs the authors' `magcache_forward` on the official WanModel at the same K / R: fed the same ratios (setting
    'same-ratios'), and fed their own per-branch calibration of the same prompt ('own-calibration', kept apart:
    `PER_BRANCH`). Their calibration vs diffusers' is in `extra`."""
    from baselines.base import get_method
    from baselines.magcache import FAMILY_DEFAULTS, calibrate_magcache

    wan_src = wan_source(src)
    wan, official = load_official(model, wan_src)
    names = ("magcache_forward", "magcache_calibration", "save_json")
    fns = load_script(src.read(SCRIPT), names, SCRIPT, wan)
    cal_prompt = model.spec.calibration_prompts[0]
    ours_cal = calibrate_magcache(model.pipe, steps, lambda: model.sample(cal_prompt, 42, steps))[
        "mag_ratios"
    ]
    theirs_cal = their_ratios(model, official, fns["magcache_calibration"], cal_prompt, 42, steps)
    their_mean = np.mean(np.array(theirs_cal), axis=0)
    cal = {
        "calibration_ratio_max_abs": float(np.max(np.abs(np.array(ours_cal) - their_mean))),
        "calibration_branch_gap_max_abs": float(np.max(np.abs(np.subtract(*theirs_cal)))),
    }
    k, r = FAMILY_DEFAULTS["wan"]
    method = get_method("magcache")
    artifacts = {"mag_ratios": ours_cal}
    floors = {seed: uncached_difference(model, official, p, seed, steps) for p, seed in zip(prompts, seeds)}
    commit, rows = src.commit(), []
    for label, ratios in (("same-ratios", [ours_cal, ours_cal]), ("own-calibration", theirs_cal)):
        for value in values:
            for prompt, seed in zip(prompts, seeds, strict=True):
                extra = {
                    "setting": label,
                    "K_R": [k, r],
                    "official_model": f"{wan_src.repo}@{wan_src.commit()}",
                }
                extra |= cal
                if label == "own-calibration":
                    extra["deliberate"] = PER_BRANCH
                pair = Pair(
                    "magcache",
                    REPO,
                    commit,
                    KNOB,
                    value,
                    partial(method.apply, model.pipe, value, steps, artifacts),
                    partial(method.remove, model.pipe),
                    fns["magcache_forward"],
                    authors_state(steps, value, k, r, ratios),
                    extra=extra,
                )
                note = f"{label}: authors' t2v --use_magcache, K {k}, retention {r}"
                rows.append(compare_wan(model, official, pair, steps, prompt, seed, floors[seed], note))
    return rows


def branch_effect(src: AuthorsSource, model: Model, steps: int, values, prompts: int = 4) -> list[dict]:
    """What the kept difference (`PER_BRANCH`) changes: the authors' forward on the official model fed their own
    per-branch calibration vs the branches' mean (what diffusers' hook can take), at each threshold; PSNR of the
    frames against the uncached official model's (evaluation prompts, seeds 100, 101, … as effect.py) and the
    computed steps per branch and sample (`measured_K`: full steps only — skipped steps still run the embeddings
    and the head)."""
    from baselines.magcache import FAMILY_DEFAULTS

    from .common import psnr
    from .wan_official import OfficialTrace

    wan_src = wan_source(src)
    wan, official = load_official(model, wan_src)
    names = ("magcache_forward", "magcache_calibration", "save_json")
    fns = load_script(src.read(SCRIPT), names, SCRIPT, wan)
    theirs_cal = their_ratios(
        model, official, fns["magcache_calibration"], model.spec.calibration_prompts[0], 42, steps
    )
    mean = list(np.mean(np.array(theirs_cal), axis=0))
    k, r = FAMILY_DEFAULTS["wan"]
    evals = list(model.spec.evaluation_prompts[:prompts])
    with driving(model, official):
        refs = [model.sample(p, 100 + i, steps) for i, p in enumerate(evals)]
    rows = []
    for label, ratios in (("per-branch", theirs_cal), ("mean", [mean, mean])):
        for value in values:
            trace, outs = OfficialTrace(official), []
            try:
                for i, p in enumerate(evals):
                    state = authors_state(steps, value, k, r, ratios)
                    with driving(model, official, fns["magcache_forward"], state):
                        outs.append(model.sample(p, 100 + i, steps))
            finally:
                trace.close()
            values_db = [psnr(o, ref) for o, ref in zip(outs, refs, strict=True)]
            rows.append(
                {
                    "method": "magcache",
                    "model": model.name,
                    "T": steps,
                    "knob": value,
                    "label": f"authors' Wan forward, {label} ratios (K = full steps)",
                    "overrides": [],
                    "measured_K": sum(trace.calls) / (model.branches * len(evals)),
                    "psnr": values_db,
                    "psnr_mean": sum(values_db) / len(values_db),
                    "code": f"{REPO}@{src.commit()}:{SCRIPT}",
                }
            )
    return rows


def main() -> int:
    """``python -m benchmarks.fidelity.magcache_wan AUTHORS_SRC [OUT]``: `branch_effect` at T = 50, thresholds
    0.06 / 0.12 / 0.24, printed and appended to OUT."""
    import json
    import sys

    from .common import authors_source, load_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    rows = branch_effect(authors_source(sys.argv[1], REPO), load_model("wan-tiny"), 50, (0.06, 0.12, 0.24))
    for row in rows:
        print(json.dumps(row), flush=True)
        if len(sys.argv) > 2:
            with open(sys.argv[2], "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
