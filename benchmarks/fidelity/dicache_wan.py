"""DiCache on wan-tiny: our port (baselines/dicache.py) next to Bujiazi/DiCache's Wan2.1 forward on their copy of the official WanModel."""

from __future__ import annotations

from functools import partial

from .common import AuthorsSource, Comparison, Model, Pair
from .wan_official import compare_wan, load_official, load_script, uncached_difference

REPO = "Bujiazi/DiCache"
SCRIPT = "WAN2.1/run_wan_dicache.py"
WAN_DIR = (
    "WAN2.1/wan"  # their copy of Wan-Video/Wan2.1's `wan` package (modules identical to upstream @ 9737cba)
)
MODELS = ("wan-tiny",)
KNOB = "rel_l1_thresh"
VALUES = (0.0, 0.08, 0.2, 0.4)


def authors_state(steps: int, thresh: float) -> dict:
    """The class attributes their t2v `generate` sets (probe depth 1, `ret_ratio` 0.2, the code's defaults)."""
    return {
        "cnt": 0,
        "probe_depth": 1,
        "num_steps": 2 * steps,
        "rel_l1_thresh": thresh,
        "accumulated_rel_l1_distance": [0.0, 0.0],
        "ret_ratio": 0.2,
        "residual_cache": [None, None],
        "probe_residual_cache": [None, None],
        "residual_window": [[], []],
        "probe_residual_window": [[], []],
        "previous_internal_states": [None, None],
        "previous_input": [None, None],
        "previous_output": [None, None],
        "resume_flag": [False, False],
    }


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Our registered method (Wan settings: δ knob, warm-up `< int(0.2 T)`, γ in [1, 2], no forced last step)
    vs the authors' `dicache_forward` on the WanModel of their own `WAN2.1/wan`, same δ."""
    from baselines.base import get_method

    wan, official = load_official(model, src, WAN_DIR)
    forward = load_script(src.read(SCRIPT), ("dicache_forward",), SCRIPT, wan)["dicache_forward"]
    method = get_method("dicache")
    floors = {seed: uncached_difference(model, official, p, seed, steps) for p, seed in zip(prompts, seeds)}
    commit, rows = src.commit(), []
    for value in values:
        for prompt, seed in zip(prompts, seeds, strict=True):
            pair = Pair(
                "dicache",
                REPO,
                commit,
                KNOB,
                value,
                partial(method.apply, model.pipe, value, steps, None),
                partial(method.remove, model.pipe),
                forward,
                authors_state(steps, value),
                extra={"official_model": f"{REPO}:{WAN_DIR}"},
            )
            note = "authors: t2v, probe_depth 1, ret_ratio 0.2, delta_y, gamma in [1, 2]"
            rows.append(compare_wan(model, official, pair, steps, prompt, seed, floors[seed], note))
    return rows
