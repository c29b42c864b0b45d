"""Δ-DiT (Chen et al., 2024) as diffusers hooks: the back blocks' output − input deviation is reused between fixed refreshes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry

from dpcache.adapters import block_layout
from dpcache.hook_utils import ContextStateManager, refresh_hook_tree, transformer_of

from ._stack_hooks import SpanState, StepHook, attach_span, cache_hits_counter, interval_full, remove_hooks
from .base import FAMILIES, CacheMethod, register

_STEP_HOOK = "delta_dit_step_hook"
_BLOCK_HOOK = "delta_dit_block_hook"


@dataclass
class DeltaDiTConfig:
    """Configuration of Δ-DiT (Chen et al., "Δ-DiT: A Training-Free Acceleration Method Tailored for Diffusion
    Transformers", 2024), ported from its re-implementation in `Shenyi-Z/TaylorSeer` (TaylorSeer-FLUX `cache_init`
    mode "Delta": `fresh_threshold = 3`, `first_enhance = 1`; `model.py` keeps `Delta-Cache = out − in`).

    On full steps the whole model runs and the cached span's deviation `Δ = out − in` is stored; on the other steps
    the blocks before the span run in full and the span returns `in + Δ` without running. The span is FLUX's (and
    HunyuanVideo's) single-stream stack, as in the TaylorSeer re-implementation; for single-stack models (Wan,
    DiT) it is the back `span_blocks` blocks (default: the back half). The paper's stage switch (back blocks early,
    front blocks late) is not in the re-implementation and not ported.

    Args:
        interval: N, a full step every N steps (authors' FLUX setting: 3). 1 never skips. The bench searches
            N = 1 … 50 (N ≥ T − 1 refreshes at step 0 only; the rule allows any N).
        first_enhance: the first steps always full (1).
        span_blocks: how many back blocks form the span on single-stack models (None: half of them).

    Least compute (`METHOD.budget_limit`): only the span is ever skipped — the blocks before it (FLUX's double-stream
    stack, the front half of a single-stack model) and the embedding / output layers run at every step — so a
    sample costs at least `1 + (T − 1)·f` full steps, f = the non-span share of a step. Measured at T = 50 (N = 50):
    flux-tiny K ≥ 25.8 (f ≈ 0.51), dit-tiny K ≥ 25.8. K = 13 and K = 9 are beyond Δ-DiT's design on these models.
    """

    interval: int = 3
    first_enhance: int = 1
    span_blocks: int | None = None
    num_inference_steps: int = 50


class DeltaDiTState(SpanState):
    """Per cache context: the cached deviation Δ of the span."""

    def reset(self) -> None:
        super().reset()
        self.delta: torch.Tensor | None = None


class DeltaDiTHook(StepHook):
    """On the transformer: step tracking; `decide` (span's first block) and `finish` (span's last block)."""

    def __init__(self, manager: ContextStateManager, config: DeltaDiTConfig) -> None:
        super().__init__(manager, config.num_inference_steps)
        self.config = config

    def decide(self, state: DeltaDiTState, block: torch.nn.Module, args: tuple, kwargs: dict):
        full = interval_full(state.step, self.config.interval, self.config.first_enhance)
        if full or state.delta is None or state.delta.shape != state.span_in.shape:
            return None
        return torch.zeros(state.span_in.shape[0], dtype=torch.bool, device=state.span_in.device)

    def finish(self, state: DeltaDiTState, out: torch.Tensor, rows) -> torch.Tensor:
        if rows is None:
            state.delta = out - state.span_in
            return out
        return state.span_in + state.delta


def delta_span(transformer: torch.nn.Module, span_blocks: int | None = None) -> tuple[torch.nn.Module, ...]:
    """The blocks whose deviation Δ-DiT caches: the single-stream stack if the model has one, else the back ones."""
    single = getattr(transformer, "single_transformer_blocks", None)
    if span_blocks is None and isinstance(single, torch.nn.ModuleList) and len(single) > 0:
        return tuple(single)
    blocks = block_layout(transformer).blocks
    n = span_blocks if span_blocks is not None else max(1, len(blocks) // 2)
    if not 0 < n < len(blocks):
        raise ValueError(
            f"Δ-DiT span of {n} blocks must leave at least one front block (model has {len(blocks)})"
        )
    return blocks[-n:]


def apply_delta_dit(module: torch.nn.Module | object, config: DeltaDiTConfig) -> None:
    """Apply Δ-DiT to a diffusion transformer (or a pipeline's transformer).

    Example:
        ```python
        >>> from diffusers import FluxPipeline
        >>> from baselines.delta_dit import DeltaDiTConfig, apply_delta_dit

        >>> pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16)
        >>> apply_delta_dit(pipe, DeltaDiTConfig(interval=3, num_inference_steps=50))
        >>> image = pipe("a red apple", num_inference_steps=50).images[0]
        ```
    """
    transformer = transformer_of(module)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(_STEP_HOOK) is not None:
        raise RuntimeError("Δ-DiT is already applied to this transformer; call remove_delta_dit first")
    manager = ContextStateManager(DeltaDiTState)
    hook = DeltaDiTHook(manager, config)
    registry.register_hook(hook, _STEP_HOOK)
    attach_span(manager, delta_span(transformer, config.span_blocks), _BLOCK_HOOK, hook.decide, hook.finish)
    refresh_hook_tree(transformer)


def remove_delta_dit(module: torch.nn.Module | object) -> None:
    """Remove Δ-DiT; the model runs uncached again."""
    remove_hooks(transformer_of(module), _STEP_HOOK, _BLOCK_HOOK)


def _apply(pipe, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    apply_delta_dit(pipe, DeltaDiTConfig(interval=int(knob), num_inference_steps=num_steps))


METHOD = register(
    CacheMethod(
        name="delta-dit",
        families=frozenset(FAMILIES),
        knob="interval",
        knob_values=tuple(range(1, 51)),
        budget_limit="Δ-DiT only ever skips its span (FLUX: the single-stream stack; single-stack models: the back "
        "half): the front blocks, embedding and output layers run at every step, so a sample costs at least "
        "1 + (T-1)·f full steps (f = the non-span share of a step); the interval values 1..50 reach it",
        config_id="fe1;span-single-or-back-half",
        compute_grows_with_knob=False,
        never_skip=1,
        apply=_apply,
        remove=remove_delta_dit,
        cache_hits=cache_hits_counter(_STEP_HOOK),
        origin=(
            "ported from the Δ-DiT re-implementation in Shenyi-Z/TaylorSeer (FLUX: single-stream stack); "
            "Wan/DiT: back half of the blocks; the paper's front/back stage switch is not ported"
        ),
    )
)
