"""TaylorSeer on dit-tiny: our port (baselines/taylorseer.py, diffusers' hook on DiT) next to Shenyi-Z/TaylorSeer's TaylorSeer-DiT forwards on their DiT class."""

from __future__ import annotations

from functools import partial

from .common import AuthorsSource, Comparison, Model, Pair
from .dit_official import build_official, compare_dit, load_dit_modules, uncached_difference

REPO = "Shenyi-Z/TaylorSeer"
DIT_DIR = "TaylorSeer-DiT"
MODELS = ("dit-tiny",)
KNOB = "interval"
VALUES = (3.0, 4.0)
# (label, authors' max_order, authors' first_enhance (None: as released, `cache_init` hard-codes 2), our config
# overrides (None: the registered method)). Their DiT README runs interval 4 / max_order 4 (DDIM 50); their
# `cache_init` fixes first_enhance 2 — the settings our registered method runs on DiT
# (baselines.taylorseer.FAMILY_SETTINGS); and both sides at the paper's FLUX settings (O = 2, first 3).
SETTINGS = (
    ("released", 4, None, None),
    ("flux-settings", 2, 3, {"max_order": 2, "disable_cache_before_step": 3}),
)


def _state(cache_init, steps: int, interval: int, order: int, first: int | None):
    """Their `cache_init` as `sample.py` calls it (interval, max_order, test_FLOPs), first_enhance set after it."""
    cache_dic, current = cache_init({"interval": interval, "max_order": order, "test_FLOPs": False}, steps)
    if first is not None:
        cache_dic["first_enhance"] = first
    return cache_dic, current


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Each setting at each interval N: our side (registered method, or our port at their settings) vs theirs."""
    from baselines.base import get_method
    from baselines.taylorseer import TaylorSeerBenchConfig, apply_taylorseer, remove_taylorseer

    mods = load_dit_modules(src, DIT_DIR, ("models", "cache_functions"))
    cache_init = mods["cache_functions"].cache_init
    official = build_official(mods["models"], model.pipe.transformer)
    method = get_method("taylorseer")
    floors = {
        seed: uncached_difference(model, official, cache_init, p, seed, steps)
        for p, seed in zip(prompts, seeds, strict=True)
    }
    commit, rows = src.commit(), []
    for label, order, first, ours in SETTINGS:
        for value in values:
            n = int(value)
            if ours is None:
                apply = partial(method.apply, model.pipe, value, steps, None)
            else:
                apply = partial(apply_taylorseer, model.pipe, TaylorSeerBenchConfig(cache_interval=n, **ours))
            extra = {
                "setting": label,
                "ours": ours or "registered",
                "authors_order_first": [order, 2 if first is None else first],
            }
            for prompt, seed in zip(prompts, seeds, strict=True):
                pair = Pair(
                    "taylorseer",
                    REPO,
                    commit,
                    KNOB,
                    value,
                    apply,
                    partial(remove_taylorseer, model.pipe),
                    None,
                    {},
                )
                pair.extra = dict(extra)
                note = f"{label}: authors' DiT code at max_order {order}, first_enhance {extra['authors_order_first'][1]}"
                rows.append(
                    compare_dit(
                        model,
                        official,
                        pair,
                        steps,
                        prompt,
                        seed,
                        partial(_state, cache_init, steps, n, order, first),
                        floors[seed],
                        note,
                    )
                )
    return rows
