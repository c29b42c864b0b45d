"""EasyCache (Zhou et al., 2025) ported as a diffusers hook: reuse the model's input-to-output transform while its rate is stable."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from dpcache.diffusers_internals import unwrap_module
from dpcache.hook_utils import (
    ContextStateManager,
    apply_cache_hooks,
    transformer_of,
)

from ._stack_hooks import RowRunner, Rows, StepHook, StepState, cache_hits_counter, fill_rows, remove_hooks
from .base import CacheMethod

_STEP_HOOK = "easycache_step_hook"

# Authors' defaults at 50 steps: (threshold τ, warm-up steps). Scaled to other step counts by `for_family`.
FAMILY_DEFAULTS = {"wan": (0.05, 10), "hunyuan-video": (0.025, 5)}


@dataclass
class EasyCacheConfig:
    """Configuration of EasyCache (Zhou et al., "Less is Enough: Training-Free Video Diffusion Acceleration via
    Runtime-Adaptive Caching", 2025), ported from `H-EmbodVis/EasyCache` (EasyCache4Wan2.1, EasyCache4HunyuanVideo).

    The whole transformer (embedding, blocks, head) is skipped on cached steps: the cache is the transformation
    `Δ = v − x` (model output minus latent input) of the last computed step, and a skipped step returns `x_t + Δ`.
    At a computed step the transformation rate `k = mean|v_t − v_c| / mean|x_t − x_c|` is measured against the
    previous computed step c; at later steps `E += k · mean|x_t − x_{t−1}| / mean|v_c|` and the step is skipped
    while `E < thresh` (else computed, `E = 0`). Warm-up steps and the last step are always computed.

    CFG: as in the authors' scripts, the branch called first at a step (the conditional one: the pipelines call
    it first, as the authors' loops) decides, and the other branches follow that decision with their own `Δ`.

    Fidelity (benchmarks/fidelity/easycache.py, `reports/competitors.md`): against H-EmbodVis/EasyCache @ 5127804
    (`EasyCache4Wan2.1/easycache_generate.py`: its `easycache_forward` bound to the official Wan2.1 `WanModel`
    @ 9737cba carrying wan-tiny's weights, driven by our WanPipeline; `benchmarks/fidelity/wan_official.py`) on
    wan-tiny, T = 50, τ = 0 / 0.05 / 0.1 / 0.2, 2 prompts: computed steps of both branches identical, max |ours −
    theirs| ≤ 3.4e-6 on frames in [0, 1] (the uncached official-vs-diffusers floor is 2.3e-6); at T = 20 (their
    `ret_steps` set to our scaled warm-up) identical steps, ≤ 3.7e-6. Fixed: the port let each CFG branch decide on
    its own (max |d| up to 0.43, steps differing); now the unconditional branch follows the conditional one:
    at K = 13 on wan-tiny (T = 50, 4 evaluation prompts, knob searched as the harness does,
    `benchmarks/fidelity/effect.py`) PSNR vs the full-compute output 13.7 dB before (τ 1.25), 22.7 dB after (τ 0.625).
    HunyuanVideo (benchmarks/fidelity/easycache_hunyuan.py): against `EasyCache4HunyuanVideo/easycache_sample_video.py`
    @ 5127804, its `easycache_forward` bound to the official `HYVideoDiffusionTransformer` (Tencent/HunyuanVideo
    @ fa14b00) carrying hunyuan-video-tiny's weights, driven by our pipeline (`hunyuan_official.py`), without CFG
    (one call per step, as they ran the CFG-distilled model), T = 50, τ = 0 / 0.025 / 0.05 / 0.1, 2 prompts:
    computed steps identical, max |ours − theirs| ≤ 1.2e-6 (uncached floor 8.3e-7).
    Differences kept: the warm-up is scaled from the authors' 10 of 50 steps to T (their `ret_steps` is fixed),
    and the state is per batch row (their forward assumes one sample), so a batch equals its samples run alone.
    With true CFG on HunyuanVideo the conditional branch decides (the authors' Wan rule); their forward run by the
    official pipeline decides on the batched [uncond, cond] call, pooling both branches' changes, which is not
    available at diffusers' conditional call (measured, rows tagged deliberate: theirs computes more steps, e.g.
    τ 0.025: 42 vs 49 of 50; PSNR ours vs theirs 37.1–51.5 dB at τ 0.025–0.1).

    Args:
        num_inference_steps: T.
        thresh: τ; authors: Wan2.1 0.05, HunyuanVideo 0.025 (50 steps). `<= 0` never skips.
        warmup_steps: always computed at the start; authors: Wan 10, HunyuanVideo 5 (of 50 steps).
    """

    num_inference_steps: int = 50
    thresh: float = 0.05
    warmup_steps: int = 10

    @classmethod
    def for_family(
        cls, family: str, num_inference_steps: int, thresh: float | None = None
    ) -> EasyCacheConfig:
        """The authors' settings, the warm-up scaled from 50 steps to `num_inference_steps` (at least 1)."""
        tau, warm = FAMILY_DEFAULTS[family]
        warmup = max(1, round(warm * num_inference_steps / 50))
        return cls(num_inference_steps, tau if thresh is None else thresh, warmup)


class EasyCacheState(StepState):
    """Per cache context: accumulator, rate k, previous input and last computed input/output/Δ (per batch row)."""

    def reset(self) -> None:
        super().reset()
        self.accumulated: torch.Tensor | None = None
        self.rate: torch.Tensor | None = None
        self.prev_input: torch.Tensor | None = None
        self.computed_input: torch.Tensor | None = None
        self.computed_output: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None


def _mean_rows(t: torch.Tensor) -> torch.Tensor:
    return t.float().abs().mean(dim=tuple(range(1, t.dim())))


class EasyCacheHook(StepHook):
    """On the transformer: decides per step and row, and skips the whole forward for the cached rows."""

    def __init__(self, manager: ContextStateManager, config: EasyCacheConfig) -> None:
        super().__init__(manager, config.num_inference_steps)
        self.config = config
        # (context, step, rows to compute) of the latest own decision: the first context called at a step decides
        # (the conditional branch: diffusers' pipelines call it first, as the authors' loops), later ones follow
        self._lead: tuple[str, int, Rows] | None = None

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self._lead = None
        return super().reset_state(module)

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.signature = inspect.signature(type(unwrap_module(module)).forward)
        return module

    def _decide(self, state: EasyCacheState, x: torch.Tensor) -> Rows:
        name, lead = self.manager.context_name, self._lead
        if lead is not None and lead[0] != name and lead[1] == state.step:  # follow the deciding branch
            state.prev_input = x
            rows = lead[2]
            if (
                rows is None
                or state.delta is None
                or state.delta.shape != x.shape
                or rows.shape[0] != x.shape[0]
            ):
                return None
            return rows
        compute = self._own_decision(state, x)
        self._lead = (name, state.step, compute)
        return compute

    def _own_decision(self, state: EasyCacheState, x: torch.Tensor) -> Rows:
        c = self.config
        forced = (
            state.step < c.warmup_steps
            or state.step >= self.num_steps - 1
            or c.thresh <= 0
            or state.delta is None
            or state.delta.shape != x.shape
        )
        compute = None
        if forced:
            state.accumulated = torch.zeros(x.shape[0], device=x.device)
        else:
            change = _mean_rows(x - state.prev_input) / _mean_rows(state.computed_output).clamp_min(1e-12)
            known = torch.isfinite(state.rate)
            state.accumulated = state.accumulated + torch.where(known, state.rate, 0.0) * change
            compute = (state.accumulated >= c.thresh) | ~known
            state.accumulated = torch.where(compute, torch.zeros_like(state.accumulated), state.accumulated)
            if compute.all():
                compute = None
        state.prev_input = x
        return compute

    def forward_step(self, module: torch.nn.Module, state: EasyCacheState, args: tuple, kwargs: dict):
        bound = self.signature.bind(module, *args, **kwargs)
        x = bound.arguments["hidden_states"]
        out_channels = getattr(getattr(module, "config", None), "out_channels", None)
        if out_channels and x.shape[1] > out_channels:
            # image-to-video: the input is [noisy latents, frame mask, first-frame latents]; the authors' rate and
            # Δ use the noisy latents only (their `raw_input`, taken before the condition `y` is concatenated)
            x = x[:, :out_channels]
        return_dict = bound.arguments.get("return_dict", True)
        rows = self._decide(state, x)
        if rows is None:
            v = self._sample(self.fn_ref.original_forward(*args, **kwargs))
        else:
            state.hits += int((~rows).sum())
            v = x + state.delta
            if rows.any():
                idx, sub = RowRunner(self.fn_ref.original_forward, x.shape[0])(rows, args, kwargs)
                v = v.clone()
                v[idx] = self._sample(sub).to(v.dtype)
        self._update(state, x, v, rows)
        return Transformer2DModelOutput(sample=v) if return_dict else (v,)

    @staticmethod
    def _sample(output) -> torch.Tensor:
        return output[0] if isinstance(output, tuple) else output.sample

    @staticmethod
    def _update(state: EasyCacheState, x: torch.Tensor, v: torch.Tensor, rows) -> None:
        """At computed rows: the rate k against the previous computed step, then the new Δ and reference."""
        if state.computed_output is not None and state.computed_output.shape == v.shape:
            rate = _mean_rows(v - state.computed_output) / _mean_rows(x - state.computed_input).clamp_min(
                1e-12
            )
        else:
            rate = torch.full((v.shape[0],), float("nan"), device=v.device)
        if rows is None or state.rate is None:
            state.rate, state.delta = rate, v - x
            state.computed_input, state.computed_output = x, v
            return
        state.rate = torch.where(rows, rate, state.rate)
        state.delta = fill_rows(v - x, state.delta, rows)
        state.computed_input = fill_rows(x, state.computed_input, rows)
        state.computed_output = fill_rows(v, state.computed_output, rows)


def apply_easycache(module: torch.nn.Module | object, config: EasyCacheConfig) -> None:
    """Apply EasyCache to a video diffusion transformer (or a pipeline's transformer).

    Example:
        ```python
        >>> from diffusers import WanPipeline
        >>> from baselines.easycache import EasyCacheConfig, apply_easycache

        >>> pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", torch_dtype=torch.bfloat16)
        >>> apply_easycache(pipe, EasyCacheConfig.for_family("wan", num_inference_steps=50))
        >>> video = pipe("a cat walking", num_inference_steps=50).frames[0]
        ```
    """
    apply_cache_hooks(
        module,
        _STEP_HOOK,
        EasyCacheState,
        lambda manager: EasyCacheHook(manager, config),
        already="EasyCache is already applied to this transformer; call remove_easycache first",
    )


def remove_easycache(module: torch.nn.Module | object) -> None:
    """Remove EasyCache; the model runs uncached again."""
    remove_hooks(transformer_of(module), _STEP_HOOK, _STEP_HOOK)


def _apply(pipe, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    family = "wan" if type(transformer_of(pipe)).__name__.startswith("Wan") else "hunyuan-video"
    apply_easycache(pipe, EasyCacheConfig.for_family(family, num_steps, knob))


_IMAGE = (
    "EasyCache is a video cache (authors' code: Wan2.1, HunyuanVideo); its warm-up and τ are tuned for video"
)

METHOD = CacheMethod(
    name="easycache",
    families=frozenset({"wan", "hunyuan-video"}),
    knob="thresh",
    never_skip=0.0,
    config_id="uncond-follows-cond",  # cached budget searches from before the CFG fix are not reused
    apply=_apply,
    remove=remove_easycache,
    cache_hits=cache_hits_counter(_STEP_HOOK),
    unsupported={"flux": _IMAGE, "dit": _IMAGE},
    origin=(
        "ported from H-EmbodVis/EasyCache; warm-up scaled from 50 steps; each CFG branch follows the conditional "
        "branch's decision (the authors' rule); checked against their Wan2.1 code on the official WanModel"
    ),
)
