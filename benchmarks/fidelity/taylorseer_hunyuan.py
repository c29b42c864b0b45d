"""TaylorSeer on hunyuan-video-tiny: our port (baselines/taylorseer.py) next to Shenyi-Z/TaylorSeer's TaylorSeer-HunyuanVideo model (their cached HYVideoDiffusionTransformer)."""

from __future__ import annotations

import importlib
from functools import partial

import torch

from .common import AuthorsSource, Comparison, Model, Pair
from .hunyuan_official import compare_hunyuan, driving, hyvideo_alias, load_official

REPO = "Shenyi-Z/TaylorSeer"
HY_DIR = "TaylorSeer-HunyuanVideo/hyvideo"  # their copy of `hyvideo`: the model's blocks carry the cache
MODELS = ("hunyuan-video-tiny",)
KNOB = "interval"
VALUES = (3.0, 5.0)
# (label, authors' max_order, authors' first_enhance, our config overrides): their code as released (`cache_init`
# mode 'Taylor': O = 1, first_enhance 1, N = 5) against our registered method (which runs those settings on
# HunyuanVideo: baselines.taylorseer.FAMILY_SETTINGS), and both at the FLUX settings (O = 2, first_enhance 3)
SETTINGS = (
    ("released", 1, 1, None),
    ("flux-settings", 2, 3, {"max_order": 2, "disable_cache_before_step": 3}),
)


def their_forward(self, x, t, text_states=None, text_mask=None, text_states_2=None, freqs_cos=None,
                  freqs_sin=None, guidance=None, return_dict=True):  # fmt: skip
    """Their pipeline's call: `current['step']` = the step index, the `cache_dic` / `current` of this branch."""
    self.ts_current["step"] = self.ts_step
    self.ts_step += 1
    return type(self).forward(self, x, t, text_states, text_mask, text_states_2, freqs_cos, freqs_sin, guidance,
                              return_dict, cache_dic=self.ts_cache_dic, current=self.ts_current)  # fmt: skip


def authors_state(hy: dict, steps: int, interval: int, order: int, first: int, **mode) -> dict:
    """Their `cache_init(T)` (mode 'Taylor' hard-coded) with the knob and mode parameters (`mode`: further
    `cache_dic` entries, e.g. another of their modes) set after it."""
    with hyvideo_alias(hy):
        cache_init = importlib.import_module("hyvideo.modules.cache_functions").cache_init
    cache_dic, current = cache_init(steps)
    cache_dic.update(fresh_threshold=interval, max_order=order, first_enhance=first, **mode)
    return {"ts_cache_dic": cache_dic, "ts_current": current, "ts_step": 0}


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Each setting at each interval N: our side (registered method, or our port at the setting) vs theirs, one
    cache per CFG branch (the schedule does not depend on the data and the forecasts are per element, so this
    equals their pipeline's batched CFG)."""
    from baselines.base import get_method
    from baselines.taylorseer import TaylorSeerBenchConfig, apply_taylorseer, remove_taylorseer

    hy, official = load_official(model, src, HY_DIR)
    method = get_method("taylorseer")
    floors = {s: uncached(model, hy, official, p, s, steps) for p, s in zip(prompts, seeds)}
    commit, rows = src.commit(), []
    for label, order, first, ours in SETTINGS:
        for value in values:
            n = int(value)
            if ours is None:
                apply = partial(method.apply, model.pipe, value, steps, None)
            else:
                apply = partial(apply_taylorseer, model.pipe, TaylorSeerBenchConfig(cache_interval=n, **ours))
            for prompt, seed in zip(prompts, seeds, strict=True):
                extra = {
                    "setting": label,
                    "ours": ours or "registered",
                    "authors_order_first": [order, first],
                }
                state = authors_state(hy, steps, n, order, first)
                pair = Pair("taylorseer", REPO, commit, KNOB, value, apply, partial(remove_taylorseer, model.pipe),
                            their_forward, state, extra)  # fmt: skip
                note = f"{label}: authors' HunyuanVideo code at max_order {order}, first_enhance {first}"
                rows.append(
                    compare_hunyuan(model, hy, official, pair, steps, prompt, seed, floors[seed], note)
                )
    return rows


def uncached(model: Model, hy: dict, official: torch.nn.Module, prompt, seed: int, steps: int) -> float:
    """Their model with caching off (interval 1: every step computed) vs our transformer uncached."""
    ours = model.sample(prompt, seed, steps)
    with driving(model, hy, official, their_forward, authors_state(hy, steps, 1, 1, 1)):
        theirs = model.sample(prompt, seed, steps)
    return float((ours - theirs).abs().max())
