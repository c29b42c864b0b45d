"""TeaCache: our port (baselines/teacache.py) next to ali-vilab/TeaCache's FLUX forward (TeaCache4FLUX)."""

from __future__ import annotations

from functools import partial

from .common import AuthorsSource, Comparison, Model, Pair, compare_pair, load_functions

REPO = "ali-vilab/TeaCache"
SCRIPT = "TeaCache4FLUX/teacache_flux.py"
MODELS = ("flux-tiny",)
KNOB = "rel_l1_thresh"
VALUES = (0.0, 0.4, 1.0)


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Both at the authors' hard-coded FLUX.1-dev polynomial (theirs has no other), same threshold."""
    from baselines.teacache import FLUX_COEFFICIENTS, TeaCacheConfig, apply_teacache, remove_teacache

    forward = load_functions(src.read(SCRIPT), ("teacache_forward",), SCRIPT)["teacache_forward"]
    commit, rows = src.commit(), []
    for value in values:
        for prompt, seed in zip(prompts, seeds, strict=True):
            state = {
                "enable_teacache": True,
                "cnt": 0,
                "num_steps": steps,
                "rel_l1_thresh": value,
                "accumulated_rel_l1_distance": 0,
                "previous_modulated_input": None,
                "previous_residual": None,
            }

            pair = Pair(
                "teacache",
                REPO,
                commit,
                KNOB,
                value,
                partial(
                    apply_teacache,
                    model.pipe,
                    TeaCacheConfig(steps, value, FLUX_COEFFICIENTS, "flux-published"),
                ),
                partial(remove_teacache, model.pipe),
                forward,
                state,
            )
            rows.append(compare_pair(model, pair, steps, prompt, seed))
    return rows
