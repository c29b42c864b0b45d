"""TeaCache on hunyuan-video-tiny: our port (baselines/teacache.py) next to ali-vilab/TeaCache's HunyuanVideo forward on the official HYVideoDiffusionTransformer."""

from __future__ import annotations

import ast
from functools import partial

from .common import AuthorsSource, Comparison, Model, Pair
from .hunyuan_official import compare_hunyuan, hunyuan_source, load_official, load_script, uncached_difference

REPO = "ali-vilab/TeaCache"
SCRIPT = "TeaCache4HunyuanVideo/teacache_sample_video.py"
MODELS = ("hunyuan-video-tiny",)
KNOB = "rel_l1_thresh"
VALUES = (0.0, 0.1, 0.15, 0.3)


def published_coefficients(source: str) -> list[float]:
    """The HunyuanVideo polynomial hard-coded in their `teacache_forward` (read from the fetched script)."""
    fn = next(
        n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "teacache_forward"
    )
    node = next(
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "coefficients"
    )
    return [float(v) for v in ast.literal_eval(node.value)]


def authors_state(steps: int, thresh: float) -> dict:
    """The class attributes their `main` sets (`num_steps` = infer_steps: one call per step and branch)."""
    return {
        "enable_teacache": True,
        "cnt": 0,
        "num_steps": steps,
        "rel_l1_thresh": thresh,
        "accumulated_rel_l1_distance": 0,
        "previous_modulated_input": None,
        "previous_residual": None,
    }


DELIBERATE = (
    "CFG state per branch (diffusers calls cond / uncond separately; the authors' forward, written for the "
    "CFG-distilled model's one call per step, decides once for the official pipeline's batched [uncond, cond])"
)


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
    """Our registered method with their published HunyuanVideo polynomial (as fitted artifacts, so the same
    polynomial on both sides) vs their `teacache_forward`, same threshold; their state per CFG branch
    (`batched`: one state, CFG batched as the official pipeline runs it)."""
    from baselines.base import get_method
    from baselines.teacache import INDICATOR

    hy_src = hunyuan_source(src)
    hy, official = load_official(model, hy_src)
    source = src.read(SCRIPT)
    forward = load_script(source, ("teacache_forward",), SCRIPT, hy)["teacache_forward"]
    coefficients = published_coefficients(source)
    artifacts = {"coefficients": coefficients, "indicator": INDICATOR, "model": "hunyuanvideo-published"}
    method = get_method("teacache")
    floors = {
        s: uncached_difference(model, hy, official, p, s, steps, batched) for p, s in zip(prompts, seeds)
    }
    commit, rows = src.commit(), []
    for value in values:
        for prompt, seed in zip(prompts, seeds, strict=True):
            pair = Pair(
                "teacache",
                REPO,
                commit,
                KNOB,
                value,
                partial(method.apply, model.pipe, value, steps, artifacts),
                partial(method.remove, model.pipe),
                forward,
                authors_state(steps, value),
                extra={"coefficients": coefficients, "official_model": f"{hy_src.repo}@{hy_src.commit()}"},
            )
            note = "authors' HunyuanVideo polynomial on both sides; " + (
                "theirs: batched CFG, one state" if batched else "theirs: one state per CFG branch"
            )
            rows.append(
                compare_hunyuan(model, hy, official, pair, steps, prompt, seed, floors[seed], note, batched)
            )
    return rows
