"""TeaCache (Liu et al., CVPR 2025) ported as diffusers hooks: skip the block stack while the rescaled input change is small."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dpcache.adapters import block_layout
from dpcache.diffusers_internals import unwrap_module
from dpcache.hook_utils import (
    ContextStateManager,
    apply_cache_hooks,
    transformer_of,
)

from ._stack_hooks import (
    BlockIO,
    SpanState,
    StepHook,
    attach_span,
    cache_hits_counter,
    fill_rows,
    rel_rows,
    remove_hooks,
)
from .base import FAMILIES, CacheMethod, Calibration

_STEP_HOOK = "teacache_step_hook"
_BLOCK_HOOK = "teacache_block_hook"

# the indicator each family uses (recorded in fitted artifacts, so a fit for another indicator is refused)
INDICATOR = "block0-modulated;wan-e0"
# Wan: the authors' --use_ret_steps mode (5 retention steps per branch, no forced last step)
WAN_RET_STEPS = (5, 0)
FLUX_COEFFICIENTS = (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01)
IDENTITY = (1.0, 0.0)
# the fixed settings besides the threshold (per family, so not TeaCacheConfig fields): Wan's indicator and retention
CONFIG_ID = f"wan-e0-ret{WAN_RET_STEPS[0]}"


@dataclass
class TeaCacheConfig:
    """Configuration of TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion
    Model", CVPR 2025), ported from `ali-vilab/TeaCache` (TeaCache4FLUX, TeaCache4Wan2.1, TeaCache4HunyuanVideo).

    At every step the indicator `m_t` — the timestep-modulated input of block 0 (FLUX, HunyuanVideo:
    `norm1(x, emb=temb)[0]`; DiT: the ada-norm-zero `norm1`; any other block: its raw input, a generic fallback) or,
    on Wan, the timestep projection `e0` (the block's `temb`, (B, 6, D)) as in the authors' Wan2.1 script with
    `--use_ret_steps` — is compared with the previous step's: `E += poly(rel(m_t, m_{t-1}))`. While
    `E < rel_l1_thresh` the whole block stack is skipped and `x_t + R_last` returned (`R` = stack output − stack
    input of the last computed step); otherwise the stack runs and `E = 0`. The first `first_full_steps` and the
    last `last_full_steps` steps are always computed (FLUX, HunyuanVideo, DiT: 1 / 1; Wan: the authors' 5
    retention steps / 0). State is per cache context (CFG branch, as the authors' Wan even/odd accumulators) and
    per batch row (so a batch equals its samples run alone, and DiT's batched CFG halves stay separate).

    Fidelity (benchmarks/fidelity, `reports/competitors.md`): against ali-vilab/TeaCache @ 7c10efc
    (`TeaCache4FLUX/teacache_flux.py`, its forward loaded at run time on flux-tiny, T = 10, thresholds 0 / 0.4 / 1,
    both with the published FLUX polynomial): identical images (max |ours − theirs| = 0) and computed steps. Wan:
    against `TeaCache4Wan2.1/teacache_generate.py` @ 7c10efc, its `teacache_forward` bound to the official Wan2.1
    `WanModel` @ 9737cba carrying wan-tiny's weights and driven by our WanPipeline
    (`benchmarks/fidelity/teacache_wan.py`, `wan_official.py`), `--use_ret_steps` (indicator `e0`, 5 retention
    steps per branch), both with the same polynomial fitted on wan-tiny, T = 50, thresholds 0 / 0.1 / 0.2 / 0.4,
    2 prompts: computed steps identical, max |ours − theirs| ≤ 1.1e-5 on frames in [0, 1] (uncached floor of the
    two model implementations: 2.3e-6). The port used block 0's modulated input and no retention steps before.
    HunyuanVideo: against `TeaCache4HunyuanVideo/teacache_sample_video.py` @ 7c10efc, its `teacache_forward` bound
    to the official `HYVideoDiffusionTransformer` (Tencent/HunyuanVideo @ fa14b00) carrying hunyuan-video-tiny's
    weights, driven by our pipeline (`benchmarks/fidelity/teacache_hunyuan.py`, `hunyuan_official.py`), both with
    the authors' published HunyuanVideo polynomial, their state per CFG branch: T = 50, thresholds 0 / 0.1 / 0.15
    / 0.3, 2 prompts: computed steps of both branches identical, max |ours − theirs| ≤ 5.1e-6 (uncached floor
    5.1e-6). Kept on purpose: the state is per CFG branch — their forward, written for the CFG-distilled model
    (one call per step), decides once per step for the official pipeline's batched [uncond, cond] call; that
    pooled decision is not available when diffusers calls the branches one after the other (measured, rows
    tagged deliberate: at 0.15 / 0.3 one prompt's steps differ, PSNR ours vs theirs down to 16.9 dB).
    Differences kept: the tiny models' polynomials are fitted by `calibrate_teacache` with the authors' recipe (no
    published coefficients exist for them; the fit's R² is stored in the artifacts), and the batch is handled per
    row (the authors' code assumes one sample per call).

    Args:
        num_inference_steps: T (the last step is always computed).
        rel_l1_thresh: the threshold; authors' FLUX values 0.25 (1.5x) / 0.4 (1.8x) / 0.6 (2.0x) / 0.8 (2.25x) at
            28 steps. `<= 0` never skips.
        coefficients: the rescale polynomial, highest degree first. The authors fit it per model; FLUX.1-dev's
            published one is `FLUX_COEFFICIENTS`. Models without published coefficients are fitted by
            `calibrate_teacache` (degree 4, the authors' recipe); `IDENTITY` uses the raw rel-L1.
        coefficients_source: which coefficients are in use ("flux-published", "fitted:<model>", "identity").
        first_full_steps / last_full_steps: always computed at the start / end (authors: 1 / 1).
    """

    num_inference_steps: int = 28
    rel_l1_thresh: float = 0.4
    coefficients: tuple[float, ...] = FLUX_COEFFICIENTS
    coefficients_source: str = "flux-published"
    first_full_steps: int = 1
    last_full_steps: int = 1
    record: list | None = field(default=None, repr=False)  # calibration: receives (x, y) rel-change pairs


class TeaCacheState(SpanState):
    """Per cache context: the accumulator, previous indicator and cached residual (one entry per batch row)."""

    def reset(self) -> None:
        super().reset()
        self.accumulated: torch.Tensor | None = None
        self.prev_indicator: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.prev_output: torch.Tensor | None = None
        self.pending_x: torch.Tensor | None = None


def modulated_input(block: torch.nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """The timestep-modulated input of a block, the TeaCache indicator (see TeaCacheConfig for each family)."""
    block = unwrap_module(block)
    params = inspect.signature(type(block).forward).bind(block, *args, **kwargs).arguments
    hidden = BlockIO(block).hidden(args, kwargs)
    norm1 = getattr(block, "norm1", None)
    if norm1 is not None and hasattr(block, "scale_shift_table") and params.get("temb") is not None:
        temb = params["temb"]
        if (
            temb.dim() >= 3
        ):  # Wan: the (B, 6, D) timestep projection e0 itself, as the authors' --use_ret_steps
            return temb.float()
    if norm1 is not None and type(norm1).__name__ == "AdaLayerNormZero":
        if params.get("temb") is not None:  # FLUX, HunyuanVideo double-stream blocks
            return norm1(hidden, emb=params["temb"])[0]
        if params.get("timestep") is not None:  # DiT: label + timestep embedding inside the norm
            return norm1(hidden, params["timestep"], params.get("class_labels"), hidden_dtype=hidden.dtype)[0]
    return hidden


def _polyval(coefficients: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    for c in coefficients:
        out = out * x + c
    return out


class TeaCacheHook(StepHook):
    """On the transformer: step tracking; `decide` (block 0) and `finish` (last block) implement the rule."""

    def __init__(self, manager: ContextStateManager, config: TeaCacheConfig) -> None:
        super().__init__(manager, config.num_inference_steps)
        self.config = config

    def decide(self, state: TeaCacheState, block: torch.nn.Module, args: tuple, kwargs: dict):
        c = self.config
        m = modulated_input(block, args, kwargs).float()
        rows = m.shape[0]
        forced = (
            state.step < c.first_full_steps
            or state.step >= self.num_steps - c.last_full_steps
            or state.prev_indicator is None
            or state.prev_indicator.shape != m.shape
        )
        if forced:
            state.accumulated = torch.zeros(rows, device=m.device)
            state.pending_x = compute = None
        else:
            x = rel_rows(m, state.prev_indicator)
            state.pending_x = x
            state.accumulated = state.accumulated + _polyval(c.coefficients, x)
            compute = state.accumulated >= c.rel_l1_thresh if c.rel_l1_thresh > 0 else None
            if compute is not None:
                state.accumulated = torch.where(
                    compute, torch.zeros_like(state.accumulated), state.accumulated
                )
        state.prev_indicator = m
        return compute

    def finish(self, state: TeaCacheState, out: torch.Tensor, rows) -> torch.Tensor:
        if self.config.record is not None and state.prev_output is not None and state.pending_x is not None:
            self.config.record.append((state.pending_x.tolist(), rel_rows(out, state.prev_output).tolist()))
        if self.config.record is not None:
            state.prev_output = out
        residual = out - state.span_in
        if rows is None:
            state.residual = residual
            return out
        estimate = state.span_in + state.residual
        state.residual = fill_rows(residual, state.residual, rows)
        return fill_rows(out, estimate, rows)


def apply_teacache(module: torch.nn.Module | object, config: TeaCacheConfig) -> None:
    """Apply TeaCache to a diffusion transformer (or a pipeline's transformer).

    Example:
        ```python
        >>> from diffusers import FluxPipeline
        >>> from baselines.teacache import TeaCacheConfig, apply_teacache

        >>> pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16)
        >>> apply_teacache(pipe, TeaCacheConfig(num_inference_steps=28, rel_l1_thresh=0.4))
        >>> image = pipe("a red apple", num_inference_steps=28).images[0]
        ```
    """
    apply_cache_hooks(
        module,
        _STEP_HOOK,
        TeaCacheState,
        lambda manager: TeaCacheHook(manager, config),
        lambda transformer, manager, hook: attach_span(
            manager, block_layout(transformer).blocks, _BLOCK_HOOK, hook.decide, hook.finish
        ),
        already="TeaCache is already applied to this transformer; call remove_teacache first",
    )


def remove_teacache(module: torch.nn.Module | object) -> None:
    """Remove TeaCache; the model runs uncached again."""
    remove_hooks(transformer_of(module), _STEP_HOOK, _BLOCK_HOOK)


def _is_flux_dev(transformer: torch.nn.Module) -> bool:
    layout = block_layout(transformer)
    return layout.model_class == "FluxTransformer2DModel" and len(layout.blocks) == 19 + 38


def _is_wan(transformer: torch.nn.Module) -> bool:
    return block_layout(transformer).model_class == "WanTransformer3DModel"


def _apply(pipe, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    transformer = transformer_of(pipe)
    if artifacts and artifacts.get("coefficients"):
        if artifacts.get("indicator") != INDICATOR:
            raise ValueError(
                f"TeaCache coefficients fitted for indicator {artifacts.get('indicator', 'wan-modulated-x')!r}, "
                f"this port uses {INDICATOR!r}: delete the cached teacache artifacts of {artifacts.get('model')}"
            )
        coefficients, source = tuple(artifacts["coefficients"]), f"fitted:{artifacts.get('model', '?')}"
    elif _is_flux_dev(transformer):
        coefficients, source = FLUX_COEFFICIENTS, "flux-published"
    else:
        coefficients, source = IDENTITY, "identity"
    first, last = WAN_RET_STEPS if _is_wan(transformer) else (1, 1)
    apply_teacache(pipe, TeaCacheConfig(num_steps, knob, coefficients, source, first, last))


def calibrate_teacache(pipe, calibration: Calibration, degree: int = 4) -> dict:
    """The authors' recipe: over full-compute runs, np.polyfit(rel change of the modulated input, rel change of
    the stack output, degree 4); the coefficients are written as JSON to `calibration.out_dir` and returned."""
    record: list = []
    apply_teacache(pipe, TeaCacheConfig(calibration.num_steps, 0.0, IDENTITY, "identity", record=record))
    try:
        calibration.run_prompts()
    finally:
        remove_teacache(pipe)
    xs = np.array([v for x, _ in record for v in x], dtype=np.float64)
    ys = np.array([v for _, y in record for v in y], dtype=np.float64)
    if len(xs) <= degree:
        raise ValueError(f"TeaCache calibration needs more than {degree} step pairs, got {len(xs)}")
    coefficients = np.polyfit(xs, ys, degree)
    fit = np.polyval(coefficients, xs)
    artifacts = {
        "method": "teacache",
        "model": calibration.model_name,
        "num_steps": calibration.num_steps,
        "degree": degree,
        "points": len(xs),
        "coefficients": [float(c) for c in coefficients],
        "indicator": INDICATOR,
        # how well the polynomial predicts the output change from the indicator change over the calibration runs
        "r2": float(1 - np.sum((ys - fit) ** 2) / max(np.sum((ys - ys.mean()) ** 2), 1e-30)),
        "mean_abs_rel_error": float(np.mean(np.abs(ys - fit) / np.maximum(np.abs(ys), 1e-12))),
        "recipe": "np.polyfit(rel-L1 of the indicator, rel-L1 of the stack output, 4) over every (step, branch) pair "
        "of full-compute runs of the calibration prompts (the authors' recipe)",
    }
    out_dir = Path(calibration.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"teacache-{calibration.model_name}-T{calibration.num_steps}.json").write_text(
        json.dumps(artifacts)
    )
    return artifacts


METHOD = CacheMethod(
    name="teacache",
    families=frozenset(FAMILIES),
    knob="rel_l1_thresh",
    config_id=CONFIG_ID,
    never_skip=0.0,
    apply=_apply,
    remove=remove_teacache,
    cache_hits=cache_hits_counter(_STEP_HOOK),
    calibrate=calibrate_teacache,
    origin=(
        "ported from ali-vilab/TeaCache; rescale polynomial: FLUX.1-dev published, else fitted per model by "
        "calibrate (degree 4, authors' recipe), else identity; Wan: indicator e0 and 5 retention steps (authors' "
        "--use_ret_steps); DiT: the block-0 ada-norm modulated input"
    ),
)
