"""EasyCache on wan-tiny: our port (baselines/easycache.py) next to H-EmbodVis/EasyCache's Wan2.1 forward on the official WanModel."""

from __future__ import annotations

from functools import partial

from .common import AuthorsSource, Comparison, Model, Pair
from .wan_official import compare_wan, load_official, load_script, uncached_difference, wan_source

REPO = "H-EmbodVis/EasyCache"
SCRIPT = "EasyCache4Wan2.1/easycache_generate.py"
MODELS = ("wan-tiny",)
KNOB = "thresh"
VALUES = (0.0, 0.05, 0.1, 0.2)


def authors_state(steps: int, thresh: float, warmup: int) -> dict:
    """The class attributes their t2v `generate` sets before sampling (`ret_steps` = 10 x 2 calls at their 50
    steps; here 2 x our warm-up, which is 10 at T = 50 and scaled with T otherwise)."""
    return {
        "cnt": 0,
        "skip_cond_step": [],
        "skip_uncond_step": [],
        "num_steps": 2 * steps,
        "thresh": thresh,
        "accumulated_error_even": 0,
        "should_calc_current_pair": True,
        "k": None,
        "previous_raw_input_even": None,
        "previous_raw_output_even": None,
        "previous_raw_output_odd": None,
        "prev_prev_raw_input_even": None,
        "cache_even": None,
        "cache_odd": None,
        "ret_steps": 2 * warmup,
        "cutoff_steps": 2 * steps - 2,
    }


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Our registered method (as the harness applies it) vs the authors' `easycache_forward`, same τ."""
    from baselines.base import get_method
    from baselines.easycache import EasyCacheConfig

    wan_src = wan_source(src)
    wan, official = load_official(model, wan_src)
    forward = load_script(src.read(SCRIPT), ("easycache_forward",), SCRIPT, wan)["easycache_forward"]
    method = get_method("easycache")
    warmup = EasyCacheConfig.for_family("wan", steps).warmup_steps
    floors = {seed: uncached_difference(model, official, p, seed, steps) for p, seed in zip(prompts, seeds)}
    commit, rows = src.commit(), []
    for value in values:
        for prompt, seed in zip(prompts, seeds, strict=True):
            pair = Pair(
                "easycache",
                REPO,
                commit,
                KNOB,
                value,
                partial(method.apply, model.pipe, value, steps, None),
                partial(method.remove, model.pipe),
                forward,
                authors_state(steps, value, warmup),
                extra={"official_model": f"{wan_src.repo}@{wan_src.commit()}"},
            )
            note = f"authors: t2v, ret_steps {warmup}x2, cutoff 2T-2"
            rows.append(compare_wan(model, official, pair, steps, prompt, seed, floors[seed], note))
    return rows
