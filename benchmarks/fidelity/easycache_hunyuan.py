"""EasyCache on hunyuan-video-tiny: our port (baselines/easycache.py) next to H-EmbodVis/EasyCache's HunyuanVideo forward on the official HYVideoDiffusionTransformer."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, wraps

import torch

from .common import AuthorsSource, Comparison, Model, Pair
from .hunyuan_official import (
    compare_hunyuan,
    hunyuan_source,
    load_official,
    load_script,
    uncached_difference,
    without_cfg,
)

REPO = "H-EmbodVis/EasyCache"
SCRIPT = "EasyCache4HunyuanVideo/easycache_sample_video.py"
MODELS = ("hunyuan-video-tiny",)
KNOB = "thresh"
VALUES = (0.0, 0.025, 0.05, 0.1)
MODES = {
    "no-cfg": "no CFG (one call per step, the authors' CFG-distilled setting)",
    "batched": "CFG 4; theirs batched [uncond, cond] with one state, as the official pipeline runs it",
}
DELIBERATE = (
    "CFG: the conditional branch decides, the unconditional follows (the authors' Wan rule, kept on HunyuanVideo); "
    "their forward run by the official pipeline with true CFG decides on the batch [uncond, cond] pooled"
)


def authors_state(steps: int, thresh: float, warmup: int) -> dict:
    """The class attributes their `main` sets (`ret_steps` 5 calls at 50 steps: here our scaled warm-up)."""
    return {"cnt": 0, "num_steps": steps, "thresh": thresh, "ret_steps": warmup, "k": None, "total_time": 0.0}


def cpu_safe(forward: Callable) -> Callable:
    """Their forward times itself with `torch.cuda.synchronize()`; a no-op while it runs on the CPU."""

    @wraps(forward)
    def run(*args, **kwargs):
        sync = torch.cuda.synchronize
        torch.cuda.synchronize = lambda *a, **k: None
        try:
            return forward(*args, **kwargs)
        finally:
            torch.cuda.synchronize = sync

    return run


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Our registered method (as the harness applies it) vs their `easycache_forward`, same τ, in both CFG
    drivings (`MODES`)."""
    from baselines.base import get_method
    from baselines.easycache import EasyCacheConfig

    hy_src = hunyuan_source(src)
    hy, official = load_official(model, hy_src)
    forward = cpu_safe(load_script(src.read(SCRIPT), ("easycache_forward",), SCRIPT, hy)["easycache_forward"])
    method = get_method("easycache")
    warmup = EasyCacheConfig.for_family("hunyuan-video", steps).warmup_steps
    commit, rows = src.commit(), []
    for key, mode in MODES.items():
        batched, m = key == "batched", without_cfg(model) if key == "no-cfg" else model
        floors = {
            s: uncached_difference(m, hy, official, p, s, steps, batched) for p, s in zip(prompts, seeds)
        }
        for value in values:
            for prompt, seed in zip(prompts, seeds, strict=True):
                pair = Pair(
                    "easycache",
                    REPO,
                    commit,
                    KNOB,
                    value,
                    partial(method.apply, m.pipe, value, steps, None),
                    partial(method.remove, m.pipe),
                    forward,
                    authors_state(steps, value, warmup),
                    extra={"official_model": f"{hy_src.repo}@{hy_src.commit()}", "mode": mode},
                )
                if batched:
                    pair.extra["deliberate"] = DELIBERATE
                note = f"authors: ret_steps {warmup}; {mode}"
                rows.append(
                    compare_hunyuan(m, hy, official, pair, steps, prompt, seed, floors[seed], note, batched)
                )
    return rows
