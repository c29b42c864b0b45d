"""DiCache: our port (baselines/dicache.py) next to Bujiazi/DiCache's FLUX forward (FLUX/run_flux_dicache.py)."""

from __future__ import annotations

from functools import partial

from .common import AuthorsSource, Comparison, Model, Pair, compare_pair, load_functions

REPO = "Bujiazi/DiCache"
SCRIPT = "FLUX/run_flux_dicache.py"
MODELS = ("flux-tiny",)
KNOB = "rel_l1_thresh"
VALUES = (0.0, 0.4, 1.0)


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """The authors' FLUX settings (probe depth 1, error "delta_y", ret_ratio 0.2, γ clipped to [1, 1.5])."""
    from baselines.dicache import DiCacheConfig, apply_dicache, remove_dicache

    forward = load_functions(src.read(SCRIPT), ("dicache_forward",), SCRIPT)["dicache_forward"]
    commit, rows = src.commit(), []
    for value in values:
        for prompt, seed in zip(prompts, seeds, strict=True):
            state = {
                "enable_dicache": True,
                "cnt": 0,
                "num_steps": steps,
                "accumulated_rel_l1_distance": 0,
                "previous_modulated_input": None,
                "previous_residual": None,
                "residual_window": [],
                "probe_residual_window": [],
                "probe_depth": 1,
                "error_choice": "delta_y",
                "rel_l1_thresh": value,
                "ret_ratio": 0.2,
            }

            pair = Pair(
                "dicache",
                REPO,
                commit,
                KNOB,
                value,
                partial(apply_dicache, model.pipe, DiCacheConfig.for_family("flux", steps, value)),
                partial(remove_dicache, model.pipe),
                forward,
                state,
            )
            rows.append(compare_pair(model, pair, steps, prompt, seed))
    return rows
