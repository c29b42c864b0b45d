"""FORA on dit-tiny: our port (baselines/fora.py) next to Shenyi-Z/TaylorSeer's TaylorSeer-DiT forwards in FORA's rule (order 0, one warm-up step) on their DiT class."""

from __future__ import annotations

from functools import partial

from .common import AuthorsSource, Comparison, Model, Pair
from .dit_official import build_official, compare_dit, load_dit_modules, uncached_difference
from .taylorseer_dit import DIT_DIR, _state

REPO = "Shenyi-Z/TaylorSeer"
MODELS = ("dit-tiny",)
KNOB = "interval"
VALUES = (3.0, 5.0, 7.0)
NOTE = (
    "TaylorSeer-DiT has no FORA mode (its cal_type knows 'full' and 'Taylor'); its Taylor path at max_order 0 and "
    "first_enhance 1 is FORA's rule: full every N steps from step 0, each block's ungated attention / MLP output "
    "reused under the current gates"
)

NOTE_SHORT = "FORA rule: their Taylor path at max_order 0, first_enhance 1"


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """At each interval N: our registered FORA vs their DiT forwards at max_order 0, first_enhance 1."""
    from baselines.base import get_method

    mods = load_dit_modules(src, DIT_DIR, ("models", "cache_functions"))
    cache_init = mods["cache_functions"].cache_init
    official = build_official(mods["models"], model.pipe.transformer)
    method = get_method("fora")
    floors = {
        seed: uncached_difference(model, official, cache_init, p, seed, steps)
        for p, seed in zip(prompts, seeds, strict=True)
    }
    commit, rows = src.commit(), []
    for value in values:
        n = int(value)
        for prompt, seed in zip(prompts, seeds, strict=True):
            pair = Pair(
                "fora",
                REPO,
                commit,
                KNOB,
                value,
                partial(method.apply, model.pipe, value, steps, None),
                partial(method.remove, model.pipe),
                None,
                {},
                {"setting": "taylorseer-dit-order0", "authors_order_first": [0, 1], "reference": NOTE},
            )
            state = partial(_state, cache_init, steps, n, 0, 1)
            rows.append(
                compare_dit(model, official, pair, steps, prompt, seed, state, floors[seed], NOTE_SHORT)
            )
    return rows
