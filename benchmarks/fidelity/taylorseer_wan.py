"""TaylorSeer on wan-tiny: our port (baselines/taylorseer.py) next to Shenyi-Z/TaylorSeer's TaylorSeer-Wan2.1 forwards on their WanModel."""

from __future__ import annotations

import importlib
import sys
import types
from contextlib import contextmanager
from functools import partial

import torch

from .common import AuthorsSource, Comparison, Model, Pair
from .wan_official import compare_wan, driving, load_official, uncached_difference, wan_alias

REPO = "Shenyi-Z/TaylorSeer"
WAN_DIR = "TaylorSeer-Wan2.1/wan"  # their copy of the `wan` package: WanModel + `wan.taylorseer` forwards
MODELS = ("wan-tiny",)
KNOB = "interval"
VALUES = (3.0, 5.0)
# (label, authors' max_order, authors' first_enhance, our config overrides): their Wan code as released
# (`cache_init` mode 'Taylor': O = 1, first_enhance 1) against our registered method (which runs those settings
# on Wan: baselines.taylorseer.FAMILY_SETTINGS), and both set to the paper's FLUX settings (O = 2, first_enhance 3).
SETTINGS = (
    ("released", 1, 1, None),
    ("flux-settings", 2, 3, {"max_order": 2, "disable_cache_before_step": 3}),
)


def load(src: AuthorsSource, model: Model) -> tuple[torch.nn.Module, types.SimpleNamespace]:
    """Their WanModel (its `__init__` runs their `cache_init`) with wan-tiny's weights and the functions their
    `WanT2V.__init__` binds; xfuser (their multi-GPU path, never called here) stubbed; their `@torch.compile` on the
    cached-step helper dropped (eager, the same math: inductor on CPU needs a compiler)."""
    from .taylorseer import _Absent

    for name in ("xfuser", "xfuser.core", "xfuser.core.distributed"):
        sys.modules.setdefault(name, _Absent(name))
    wan, official = load_official(model, src, WAN_DIR, whole=True)
    with wan_alias(wan):
        fw = importlib.import_module("wan.taylorseer.forwards.wan_forward")
        blk = importlib.import_module("wan.taylorseer.forwards.wan_attention_forward")
        cache_init = importlib.import_module("wan.taylorseer.cache_functions").cache_init
    compiled = blk.wan_attention_cache_forward
    blk.wan_attention_cache_forward = getattr(compiled, "_torchdynamo_orig_callable", compiled)
    return official, types.SimpleNamespace(
        forward=fw.wan_forward, block=blk.wan_attention_forward, cache_init=cache_init
    )


@contextmanager
def _authors(model: Model, official: torch.nn.Module, fns, interval: int, order: int, first: int):
    """Their forwards bound as `WanT2V.__init__` binds them (model and every block), a fresh `cache_init` with the
    knob and mode parameters set after it (its mode is hard-coded), and their generate loop's extra arguments
    (`current_step`, `current_stream`: conditional call then unconditional, as our pipeline calls them)."""
    cache_dic, current = fns.cache_init(official)
    cache_dic.update(fresh_threshold=interval, max_order=order, first_enhance=first)
    calls = [0]

    def forward(self, x, t, context, seq_len, clip_fea=None, y=None):
        step, stream = divmod(calls[0], 2)
        calls[0] += 1
        s = "cond_stream" if stream == 0 else "uncond_stream"
        return fns.forward(
            self, x, t, context, seq_len, current_step=step, current_stream=s, clip_fea=clip_fea, y=y
        )

    for b in official.blocks:
        b.forward = types.MethodType(fns.block, b)
    try:
        with driving(model, official, forward, {"cache_dic": cache_dic, "current": current}):
            yield
    finally:
        for b in official.blocks:
            del b.forward


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Each setting at each interval N: our side (registered method, or our port at their settings) vs theirs."""
    from baselines.base import get_method
    from baselines.taylorseer import TaylorSeerBenchConfig, apply_taylorseer, remove_taylorseer

    official, fns = load(src, model)
    method = get_method("taylorseer")
    floors = {seed: uncached_difference(model, official, p, seed, steps) for p, seed in zip(prompts, seeds)}
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
                    extra,
                )
                row = compare_wan(
                    model,
                    official,
                    pair,
                    steps,
                    prompt,
                    seed,
                    floors[seed],
                    f"{label}: authors' Wan code at max_order {order}, first_enhance {first}",
                    theirs_context=partial(_authors, model, official, fns, n, order, first),
                )
                rows.append(row)
    return rows
