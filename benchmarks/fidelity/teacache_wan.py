"""TeaCache on wan-tiny: our port (baselines/teacache.py) next to ali-vilab/TeaCache's Wan2.1 forward on the official WanModel."""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

from .common import AuthorsSource, Comparison, Model, Pair
from .wan_official import compare_wan, load_official, load_script, uncached_difference, wan_source

REPO = "ali-vilab/TeaCache"
SCRIPT = "TeaCache4Wan2.1/teacache_generate.py"
MODELS = ("wan-tiny",)
KNOB = "rel_l1_thresh"
VALUES = (0.0, 0.1, 0.2, 0.4)


def fitted(model: Model, steps: int, prompts: int = 2) -> dict:
    """`calibrate_teacache` on the model's first calibration prompts at T = `steps` (the authors' recipe; there
    are no published coefficients for wan-tiny): the polynomial both sides get."""
    from baselines.base import Calibration
    from baselines.teacache import calibrate_teacache

    cal = model.spec.calibration_prompts[:prompts]

    def run() -> None:
        for i, p in enumerate(cal):
            model.sample(p, 42 + i, steps)

    return calibrate_teacache(model.pipe, Calibration(model.name, steps, run, Path(tempfile.mkdtemp())))


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """The authors' t2v setting with `--use_ret_steps` (indicator e0, 5 retention steps per branch, no forced
    last step), both sides with the same fitted polynomial and threshold; our registered method as the harness
    applies it."""
    from baselines.base import get_method

    wan_src = wan_source(src)
    wan, official = load_official(model, wan_src)
    forward = load_script(src.read(SCRIPT), ("teacache_forward",), SCRIPT, wan)["teacache_forward"]
    artifacts = fitted(model, steps)
    method = get_method("teacache")
    floors = {seed: uncached_difference(model, official, p, seed, steps) for p, seed in zip(prompts, seeds)}
    commit, rows = src.commit(), []
    for value in values:
        for prompt, seed in zip(prompts, seeds, strict=True):
            state = {
                "enable_teacache": True,
                "cnt": 0,
                "num_steps": 2 * steps,
                "teacache_thresh": value,
                "accumulated_rel_l1_distance_even": 0,
                "accumulated_rel_l1_distance_odd": 0,
                "previous_e0_even": None,
                "previous_e0_odd": None,
                "previous_residual_even": None,
                "previous_residual_odd": None,
                "use_ref_steps": True,
                "coefficients": list(artifacts["coefficients"]),
                "ret_steps": 5 * 2,
                "cutoff_steps": 2 * steps,
            }
            pair = Pair(
                "teacache",
                REPO,
                commit,
                KNOB,
                value,
                partial(method.apply, model.pipe, value, steps, artifacts),
                partial(method.remove, model.pipe),
                forward,
                state,
                extra={
                    "coefficients": artifacts["coefficients"],
                    "official_model": f"{wan_src.repo}@{wan_src.commit()}",
                },
            )
            note = "authors: --use_ret_steps (e0, ret_steps 5x2); polynomial fitted on wan-tiny, both sides"
            rows.append(compare_wan(model, official, pair, steps, prompt, seed, floors[seed], note))
    return rows
