"""DiCache (Bu et al., ICLR 2026) ported as diffusers hooks: a shallow probe decides when to skip, trajectory-aligned reuse."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks import ModelHook

from dpcache.adapters import block_layout
from dpcache.hook_utils import (
    ContextStateManager,
    apply_cache_hooks,
    register_hook,
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
from .base import FAMILIES, CacheMethod

_STEP_HOOK = "dicache_step_hook"
_BLOCK_HOOK = "dicache_block_hook"

# Per family: (threshold δ, gamma clip, warm-up counts the boundary step, last step forced); from the authors' scripts.
FAMILY_DEFAULTS = {
    "flux": (0.4, (1.0, 1.5), True, True),  # FLUX/run_flux_dicache.py, 30 steps, error_choice "delta_y"
    "hunyuan-video": (0.1, (1.0, 1.5), False, False),  # HunyuanVideo/run_hunyuanvideo_dicache.py, 50 steps
    "wan": (0.08, (1.0, 2.0), False, False),  # WAN2.1/run_wan_dicache.py (code 0.08; the paper says 0.2)
    "dit": (0.4, (1.0, 1.5), True, True),  # no authors' DiT script: FLUX's image settings
}


@dataclass
class DiCacheConfig:
    """Configuration of DiCache (Bu et al., "DiCache: Let Diffusion Model Determine Its Own Cache", ICLR 2026),
    ported from `Bujiazi/DiCache` (FLUX, WAN2.1, HunyuanVideo scripts).

    Every step runs the first `probe_depth` blocks (the probe, counted as compute) to get `p_t`, and accumulates
    `E += rel(p_t, p_{t-1})` (the authors' default `error_choice="delta_y"`; `p_{t-1}` is refreshed every step).
    While `E < rel_l1_thresh` the remaining blocks are skipped and the output is aligned to the trajectory of the
    last two computed steps k-1, k: `γ = mean|(p_t − x_t) − r^p_{k−1}| / mean|r^p_k − r^p_{k−1}|` clipped to
    `gamma_clip`, `out = x_t + R_{k−1} + γ (R_k − R_{k−1})` (with one residual: `x_t + R_k`). Otherwise the stack
    resumes from the probe output (the probe is not wasted) and `E = 0`. State is per cache context and per row.

    Args:
        num_inference_steps: T.
        rel_l1_thresh: δ. Authors: FLUX 0.4 (30 steps), HunyuanVideo 0.1 (50 steps), Wan 0.08 in code (0.2 in the
            paper; we use the code's 0.08). `<= 0` never skips.
        probe_depth: m, the probe's blocks (authors: 1, "recommend 1~5"); the model needs more than m blocks.
        warmup_ratio: steps up to `int(warmup_ratio·T)` are computed in full (authors: 0.2).
        warmup_inclusive: FLUX's script computes steps `<= int(0.2 T)`, the video scripts steps `< int(0.2 T)`.
        force_last_step: FLUX's script also computes the last step.
        gamma_clip: [1, 1.5] (FLUX, HunyuanVideo) or [1, 2] (Wan).

    Fidelity (benchmarks/fidelity/dicache.py, `reports/competitors.md`): against Bujiazi/DiCache @ dd7f0de
    (`FLUX/run_flux_dicache.py`, its forward loaded at run time) on flux-tiny, T = 10, δ = 0 / 0.4 / 1 with the
    authors' FLUX settings: the same computed steps and max |ours − theirs| = 2.0e-6 (float rounding of the
    per-row accumulator and γ; their code reduces over the whole batch of one sample). Wan (benchmarks/fidelity/
    dicache_wan.py): against `WAN2.1/run_wan_dicache.py` @ dd7f0de, its `dicache_forward` bound to the WanModel of
    their own `WAN2.1/wan` copy (identical to Wan-Video/Wan2.1 @ 9737cba) carrying wan-tiny's weights and driven
    by our WanPipeline (`wan_official.py`), their defaults (probe 1, ret_ratio 0.2, γ in [1, 2]), T = 50,
    δ = 0 / 0.08 / 0.2 / 0.4, 2 prompts: computed steps identical, max |ours − theirs| ≤ 2.6e-5 on frames in
    [0, 1] (uncached floor of the two model implementations 2.3e-6, amplified by the γ extrapolation). Kept: their
    warm-up counts calls (`cnt < int(0.2·2T)`), ours steps (`< int(0.2 T)`): the same whenever int(0.4 T) is even
    (T = 10, 20, 50 …); otherwise their conditional branch gets one more warm-up step. HunyuanVideo
    (benchmarks/fidelity/dicache_hunyuan.py): against `HunyuanVideo/run_hunyuanvideo_dicache.py` @ dd7f0de, its
    `dicache_forward` bound to the `HYVideoDiffusionTransformer` of their own `HunyuanVideo/hyvideo` copy carrying
    hunyuan-video-tiny's weights, driven by our pipeline (`hunyuan_official.py`), their defaults (probe 1,
    ret_ratio 0.2, γ in [1, 1.5]) with their state per CFG branch, T = 50, δ = 0 / 0.1 / 0.2 / 0.4, 2 prompts:
    computed steps of both branches identical, max |ours − theirs| ≤ 2.1e-5 (uncached floor 5.1e-6, amplified by
    γ). Kept on purpose: the state is per CFG branch — their forward, written for the CFG-distilled model (one
    call per step), decides once per step for the official pipeline's batched [uncond, cond] call, which diffusers'
    two calls cannot reproduce (measured, rows tagged deliberate: steps differ at δ ≥ 0.1, PSNR ours vs theirs
    down to 18.3 dB).

    Budget knob: `rel_l1_thresh`, searched over (0, 1e3) — saturating: every step after the warm-up skips.
    Least compute (`BUDGET_LIMIT`): the warm-up steps (`int(0.2 T) + 1` for FLUX's and DiT's settings) and the
    forced last step compute in full, and every other step still runs the probe, so a sample costs at least
    `W + L + (T − W − L)·c` full steps (c = the probe's share of a step). Measured at T = 50: flux-tiny K ≥ 21.8,
    dit-tiny K ≥ 21.8 (c ≈ 0.26): K = 13 and K = 9 are beyond the authors' warm-up there.
    """

    num_inference_steps: int = 30
    rel_l1_thresh: float = 0.4
    probe_depth: int = 1
    warmup_ratio: float = 0.2
    warmup_inclusive: bool = True
    force_last_step: bool = True
    gamma_clip: tuple[float, float] = (1.0, 1.5)

    @property
    def config_id(self) -> str:
        """The fixed settings besides the knob and T, as the bench's budget cache keys them."""
        return f"m{self.probe_depth};warm{self.warmup_ratio};family-defaults"

    @classmethod
    def for_family(
        cls, family: str, num_inference_steps: int, rel_l1_thresh: float | None = None
    ) -> DiCacheConfig:
        """The authors' settings for a model family (FLUX's for DiT, which they did not release)."""
        delta, clip, inclusive, last = FAMILY_DEFAULTS[family]
        thresh = delta if rel_l1_thresh is None else rel_l1_thresh
        return cls(
            num_inference_steps, thresh, warmup_inclusive=inclusive, force_last_step=last, gamma_clip=clip
        )


class DiCacheState(SpanState):
    """Per cache context: x_t, the accumulator, the previous probe output and the last two computed residuals
    (whole stack `R` and probe `r^p`), each with one entry per batch row."""

    def reset(self) -> None:
        super().reset()
        self.x_in: torch.Tensor | None = None
        self.accumulated: torch.Tensor | None = None
        self.prev_probe: torch.Tensor | None = None
        self.probe_residual: torch.Tensor | None = None
        self.residuals: list[torch.Tensor] = []  # [R_{k-1}, R_k]
        self.probe_residuals: list[torch.Tensor] = []  # [r^p_{k-1}, r^p_k]
        self.counts: torch.Tensor | None = None  # computed residuals per row (0, 1, 2+)


class DiCacheInputHook(ModelHook):
    """On block 0 (the probe's first block): records x_t; the probe blocks always run."""

    def __init__(self, manager: ContextStateManager) -> None:
        super().__init__()
        self.manager = manager

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.io = BlockIO(module)
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        self.manager.get_state().x_in = self.io.hidden(args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)


class DiCacheHook(StepHook):
    """On the transformer: step tracking; `decide` (first block after the probe) and `finish` (last block)."""

    def __init__(self, manager: ContextStateManager, config: DiCacheConfig) -> None:
        super().__init__(manager, config.num_inference_steps)
        self.config = config
        warm = int(config.warmup_ratio * config.num_inference_steps)
        self.warmup_steps = warm + 1 if config.warmup_inclusive else warm

    def decide(self, state: DiCacheState, block: torch.nn.Module, args: tuple, kwargs: dict):
        c = self.config
        probe = state.span_in  # the probe output p_t: the input of the first block after the probe
        state.probe_residual = probe - state.x_in
        forced = (
            state.step < self.warmup_steps
            or (c.force_last_step and state.step == self.num_steps - 1)
            or state.prev_probe is None
            or state.prev_probe.shape != probe.shape
            or state.counts is None
        )
        compute = None
        if forced:
            state.accumulated = torch.zeros(probe.shape[0], device=probe.device)
        else:
            state.accumulated = state.accumulated + rel_rows(probe, state.prev_probe)
            if c.rel_l1_thresh > 0:
                compute = (state.accumulated >= c.rel_l1_thresh) | (state.counts == 0)
                state.accumulated = torch.where(
                    compute, torch.zeros_like(state.accumulated), state.accumulated
                )
        state.prev_probe = probe
        return compute

    def _aligned(self, state: DiCacheState) -> torch.Tensor:
        x, rp = state.x_in, state.probe_residual
        if len(state.residuals) < 2:
            return x + state.residuals[-1]
        (r0, r1), (p0, p1) = state.residuals, state.probe_residuals
        dims, shape = tuple(range(1, x.dim())), (-1, *([1] * (x.dim() - 1)))
        num = (rp - p0).float().abs().mean(dim=dims)  # mean|r^p_t − r^p_{k−1}| / mean|r^p_k − r^p_{k−1}|
        gamma = num / (p1 - p0).float().abs().mean(dim=dims).clamp_min(1e-12)
        gamma = gamma.clamp(*self.config.gamma_clip).view(shape).to(x.dtype)
        one = (state.counts < 2).view(shape)
        return torch.where(one, x + r1, x + r0 + gamma * (r1 - r0))

    def finish(self, state: DiCacheState, out: torch.Tensor, rows) -> torch.Tensor:
        residual = out - state.x_in
        estimate = self._aligned(state) if rows is not None else out
        computed = torch.ones(out.shape[0], dtype=torch.bool, device=out.device) if rows is None else rows
        if state.counts is None or state.counts.shape[0] != out.shape[0]:
            state.counts = torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
        self._push(state.residuals, residual, computed)
        self._push(state.probe_residuals, state.probe_residual, computed)
        state.counts = state.counts + computed.long()
        return fill_rows(out, estimate, rows)

    @staticmethod
    def _push(window: list[torch.Tensor], new: torch.Tensor, rows: torch.Tensor) -> None:
        """Shift the two-entry window of the computed rows (the other rows keep theirs)."""
        if not window:
            window.append(new)
            return
        if len(window) == 1:
            window.insert(0, window[0])
        window[0] = fill_rows(window[1], window[0], rows)
        window[1] = fill_rows(new, window[1], rows)


def apply_dicache(module: torch.nn.Module | object, config: DiCacheConfig) -> None:
    """Apply DiCache to a diffusion transformer (or a pipeline's transformer).

    Example:
        ```python
        >>> from diffusers import FluxPipeline
        >>> from baselines.dicache import DiCacheConfig, apply_dicache

        >>> pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16)
        >>> apply_dicache(pipe, DiCacheConfig.for_family("flux", num_inference_steps=30))
        >>> image = pipe("a red apple", num_inference_steps=30).images[0]
        ```
    """
    transformer = transformer_of(module)
    blocks = block_layout(transformer).blocks
    if len(blocks) <= config.probe_depth:
        raise ValueError(
            f"DiCache's probe of {config.probe_depth} block(s) needs a deeper model ({len(blocks)} blocks)"
        )

    def block_hooks(_, manager: ContextStateManager, hook: DiCacheHook) -> None:
        register_hook(blocks[0], DiCacheInputHook(manager), _BLOCK_HOOK)
        attach_span(manager, blocks[config.probe_depth :], _BLOCK_HOOK, hook.decide, hook.finish)

    apply_cache_hooks(
        transformer,
        _STEP_HOOK,
        DiCacheState,
        lambda manager: DiCacheHook(manager, config),
        block_hooks,
        already="DiCache is already applied to this transformer; call remove_dicache first",
    )


def remove_dicache(module: torch.nn.Module | object) -> None:
    """Remove DiCache; the model runs uncached again."""
    remove_hooks(transformer_of(module), _STEP_HOOK, _BLOCK_HOOK)


_FAMILY_OF = {
    "FluxTransformer2DModel": "flux",
    "WanTransformer3DModel": "wan",
    "HunyuanVideoTransformer3DModel": "hunyuan-video",
    "DiTTransformer2DModel": "dit",
}


def _apply(pipe, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    family = _FAMILY_OF.get(type(transformer_of(pipe)).__name__, "flux")
    apply_dicache(pipe, DiCacheConfig.for_family(family, num_steps, knob))


BUDGET_LIMIT = (
    "DiCache computes its warm-up (steps <= int(0.2·T) for FLUX/DiT, < int(0.2·T) for video) and FLUX's forced "
    "last step in full and runs its probe block at every other step, so a sample costs at least "
    "W + L + (T-W-L)·c full steps (c = the probe's share of a step); the threshold range (0, 1e3) saturates"
)

METHOD = CacheMethod(
    name="dicache",
    families=frozenset(FAMILIES),
    knob="rel_l1_thresh",
    budget_limit=BUDGET_LIMIT,
    config_id=DiCacheConfig().config_id,
    never_skip=0.0,
    apply=_apply,
    remove=remove_dicache,
    cache_hits=cache_hits_counter(_STEP_HOOK),
    origin=(
        "ported from Bujiazi/DiCache (probe m=1, delta_y error, trajectory-aligned reuse; the probe's block is "
        "counted as compute, so the model needs >= 2 blocks); DiT uses FLUX's settings; Wan δ from code (0.08)"
    ),
)
