"""FORA on wan-tiny: our port (baselines/fora.py) next to Shenyi-Z/TaylorSeer's TaylorSeer-Wan2.1 forwards run as FORA (order 0, one warm-up step).

The FORA mode of the TaylorSeer codebase (`cache_init` mode 'original': `fresh_ratio` 0, no Taylor cache) cannot
run in its Wan folder: `cal_type` gives such a mode's cached steps the type 'ToCa', which its Wan block forward
(`wan_attention_forward`) rejects ("Not supported type"; it implements 'full' and 'Taylor' only). Its 'Taylor'
path at `max_order` 0 with `first_enhance` 1 is FORA's rule: a full step every N steps from step 0 (the same
`cal_type` counter), each block's ungated self-attention, cross-attention and FFN outputs reused in between with
the current step's gates (`cache_add`). That is what this check runs on their side.
"""

from __future__ import annotations

from functools import partial

from .common import AuthorsSource, Comparison, Model, Pair
from .taylorseer_wan import REPO, WAN_DIR, _authors, load
from .wan_official import compare_wan, uncached_difference

__all__ = ["KNOB", "MODELS", "REPO", "VALUES", "WAN_DIR", "compare"]

MODELS = ("wan-tiny",)
KNOB = "interval"
VALUES = (3.0, 5.0, 7.0)
ORDER, FIRST = 0, 1  # FORA through their Taylor path: no derivatives, step 0 the only warm-up step


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Our registered FORA (interval N, first_enhance 1) vs their Wan forwards at order 0, first_enhance 1."""
    from baselines.base import get_method

    official, fns = load(src, model)
    method = get_method("fora")
    floors = {seed: uncached_difference(model, official, p, seed, steps) for p, seed in zip(prompts, seeds)}
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
                {"authors_order_first": [ORDER, FIRST], "official_model": f"{REPO}:{WAN_DIR}"},
            )
            rows.append(
                compare_wan(
                    model,
                    official,
                    pair,
                    steps,
                    prompt,
                    seed,
                    floors[seed],
                    "authors' TaylorSeer-Wan2.1 'Taylor' path at max_order 0, first_enhance 1 (FORA's rule; "
                    "their FORA mode has no Wan block forward)",
                    theirs_context=partial(_authors, model, official, fns, n, ORDER, FIRST),
                )
            )
    return rows
