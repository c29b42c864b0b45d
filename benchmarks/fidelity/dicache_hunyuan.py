"""DiCache on hunyuan-video-tiny: our port (baselines/dicache.py) next to Bujiazi/DiCache's HunyuanVideo forward on their copy of the official HYVideoDiffusionTransformer."""

from __future__ import annotations

from functools import partial

from .common import AuthorsSource, Comparison, Model, Pair
from .hunyuan_official import compare_hunyuan, load_official, load_script, uncached_difference

REPO = "Bujiazi/DiCache"
SCRIPT = "HunyuanVideo/run_hunyuanvideo_dicache.py"
HY_DIR = "HunyuanVideo/hyvideo"  # their copy of Tencent/HunyuanVideo's `hyvideo` package
MODELS = ("hunyuan-video-tiny",)
KNOB = "rel_l1_thresh"
VALUES = (0.0, 0.1, 0.2, 0.4)
DELIBERATE = (
    "CFG state per branch (diffusers calls cond / uncond separately; the authors' forward, written for the "
    "CFG-distilled model's one call per step, decides once for the official pipeline's batched [uncond, cond])"
)


def authors_state(steps: int, thresh: float) -> dict:
    """The class attributes their `main` sets (probe depth 1, `ret_ratio` 0.2; `num_steps` = infer_steps)."""
    return {
        "cnt": 0,
        "probe_depth": 1,
        "num_steps": steps,
        "rel_l1_thresh": thresh,
        "ret_ratio": 0.2,
        "accumulated_rel_l1_distance": 0,
        "residual_cache": None,
        "probe_residual_cache": None,
        "residual_window": [],
        "probe_residual_window": [],
        "resume_flag": False,
    }


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Their state per CFG branch (the check), then the official pipeline's batched CFG (deliberate rows)."""
    rows = compare_mode(src, model, steps, values, prompts, seeds, False)
    for r in compare_mode(src, model, steps, values, prompts, seeds, True):
        r.extra["deliberate"] = DELIBERATE
        rows.append(r)
    return rows


def compare_mode(
    src: AuthorsSource, model: Model, steps: int, values, prompts, seeds, batched: bool = False
) -> list[Comparison]:
    """Our registered method (HunyuanVideo settings: warm-up `< int(0.2 T)`, γ in [1, 1.5], no forced last step)
    vs their `dicache_forward` on the model class of their own `HunyuanVideo/hyvideo`, same δ."""
    from baselines.base import get_method

    hy, official = load_official(model, src, HY_DIR)
    forward = load_script(src.read(SCRIPT), ("dicache_forward",), SCRIPT, hy)["dicache_forward"]
    method = get_method("dicache")
    floors = {
        s: uncached_difference(model, hy, official, p, s, steps, batched) for p, s in zip(prompts, seeds)
    }
    commit, rows = src.commit(), []
    for value in values:
        for prompt, seed in zip(prompts, seeds, strict=True):
            pair = Pair(
                "dicache",
                REPO,
                commit,
                KNOB,
                value,
                partial(method.apply, model.pipe, value, steps, None),
                partial(method.remove, model.pipe),
                forward,
                authors_state(steps, value),
                extra={"official_model": f"{REPO}:{HY_DIR}"},
            )
            note = "authors: probe_depth 1, ret_ratio 0.2, gamma in [1, 1.5]; " + (
                "theirs: batched CFG, one state" if batched else "theirs: one state per CFG branch"
            )
            rows.append(
                compare_hunyuan(model, hy, official, pair, steps, prompt, seed, floors[seed], note, batched)
            )
    return rows
