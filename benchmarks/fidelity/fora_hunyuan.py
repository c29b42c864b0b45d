"""FORA on hunyuan-video-tiny: our port (baselines/fora.py) next to Shenyi-Z/TaylorSeer's TaylorSeer-HunyuanVideo model run in its FORA mode."""

from __future__ import annotations

from functools import partial

from .common import AuthorsSource, Comparison, Model, Pair
from .hunyuan_official import compare_hunyuan, load_official
from .taylorseer_hunyuan import HY_DIR, REPO, authors_state, their_forward, uncached

__all__ = ["KNOB", "MODELS", "REPO", "VALUES", "compare"]

MODELS = ("hunyuan-video-tiny",)
KNOB = "interval"
VALUES = (3.0, 5.0, 7.0)
# their `cache_init` mode 'original' (FORA): fresh_ratio 0, max_order 0, first_enhance 1, no Taylor cache; `cal_type`
# then computes step 0 and every N-th step after it, and the cached steps take their 'ToCa' path with no fresh tokens
FORA_MODE = {"fresh_ratio": 0.0, "taylor_cache": False}


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Our registered FORA (interval N, first_enhance 1) vs their model in its FORA mode, one cache per branch."""
    from baselines.base import get_method

    hy, official = load_official(model, src, HY_DIR)
    method = get_method("fora")
    floors = {s: uncached(model, hy, official, p, s, steps) for p, s in zip(prompts, seeds)}
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
                their_forward,
                authors_state(hy, steps, n, 0, 1, **FORA_MODE),
                {"authors_mode": "original (FORA)", "official_model": f"{REPO}:{HY_DIR}"},
            )
            note = "authors' TaylorSeer-HunyuanVideo in cache_init mode 'original' (FORA)"
            rows.append(compare_hunyuan(model, hy, official, pair, steps, prompt, seed, floors[seed], note))
    return rows
