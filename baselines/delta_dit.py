"""Δ-DiT (Chen et al., 2024) as diffusers hooks: the back blocks' output − input deviation is reused between fixed refreshes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpcache.adapters import block_layout
from dpcache.hook_utils import (
    ContextStateManager,
    apply_cache_hooks,
    transformer_of,
)

from ._stack_hooks import SpanState, StepHook, attach_span, cache_hits_counter, interval_full, remove_hooks
from .base import FAMILIES, CacheMethod

_STEP_HOOK = "delta_dit_step_hook"
_BLOCK_HOOK = "delta_dit_block_hook"


@dataclass
class DeltaDiTConfig:
    """Configuration of Δ-DiT (Chen et al., "Δ-DiT: A Training-Free Acceleration Method Tailored for Diffusion
    Transformers", 2024, arXiv 2406.01125).

    Full steps: the first `first_enhance` steps, then every `interval`-th (the fixed schedule of the
    re-implementation in `Shenyi-Z/TaylorSeer`, TaylorSeer-FLUX `cache_init` mode "Delta": `fresh_threshold = 3`,
    `first_enhance = 1`). On full steps the whole model runs and each cached span's deviation `Δ = out − in` is
    stored (Δ-Cache); on the other steps one span returns `in + Δ` without running while the rest of the model
    runs. The paper's stage switch ("accelerate the rear DiT blocks in the early sampling stages and the front DiT
    blocks in the later stages"): before step `stage_boundary · T` the back span is cached, from it on the front
    span. Spans: FLUX / HunyuanVideo — back = the single-stream stack (as the re-implementation), front = the
    double-stream stack (its image and text streams each get their Δ); single-stack models (Wan, DiT) — the back /
    front `span_blocks` blocks (default: half of them each).

    Fidelity: the paper's code was never released; the public code is the TaylorSeer re-implementation
    (Shenyi-Z/TaylorSeer @ 288776d), written for BFL's `flux` package — checked by reading. It caches the
    single-stream stack at every cached step (no stage switch: `stage_switch=False` here reproduces that), and its
    `cal_type` turns every other cached step of its "Delta" mode into a plain FORA-like reuse step (fresh ratio
    0), a quirk of its shared step classifier that is not ported. Interpretation: the boundary `b` is a tuned
    hyperparameter in the paper; 0.5 · T here (the steps' midpoint).

    Args:
        interval: N, a full step every N steps (authors' FLUX setting: 3). 1 never skips. The bench searches
            N = 1 … 50 (N ≥ T − 1 refreshes at step 0 only; the rule allows any N).
        first_enhance: the first steps always full (1).
        span_blocks: how many blocks form each span on single-stack models (None: half of them).
        stage_switch: cache the back span before the boundary and the front span after it (the paper); False:
            the back span at every cached step (the TaylorSeer re-implementation, the former port).
        stage_boundary: the switch, as a fraction of T.

    Least compute (`METHOD.budget_limit`): only one span is ever skipped — the other half of the model and the
    embedding / output layers run at every step — so a sample costs at least `1 + (T − 1)·f` full steps, f = the
    non-span share of a step (flux-tiny and dit-tiny, back span only: K ≥ 25.8 at T = 50, f ≈ 0.51). K = 13 and
    K = 9 are beyond Δ-DiT's design on these models.
    """

    interval: int = 3
    first_enhance: int = 1
    span_blocks: int | None = None
    num_inference_steps: int = 50
    stage_switch: bool = True
    stage_boundary: float = 0.5

    @property
    def config_id(self) -> str:
        """The fixed settings besides the knob and T, as the bench's budget cache keys them."""
        span = "single-or-back-half" if self.span_blocks is None else str(self.span_blocks)
        stage = f"stage-switch{self.stage_boundary}" if self.stage_switch else "no-stage-switch"
        return f"fe{self.first_enhance};span-{span};{stage}"


class DeltaDiTState(SpanState):
    """Per cache context: the cached deviations Δ of each span (image stream; text stream of two-stream spans)."""

    def reset(self) -> None:
        super().reset()
        self.delta: dict[str, torch.Tensor] = {}
        self.delta_enc: dict[str, torch.Tensor] = {}


class DeltaDiTHook(StepHook):
    """On the transformer: step tracking; per span, `decide` (its first block) and `finish` (its last block)."""

    def __init__(self, manager: ContextStateManager, config: DeltaDiTConfig) -> None:
        super().__init__(manager, config.num_inference_steps)
        self.config = config

    def cached_span(self, step: int) -> str | None:
        """Which span a step reuses ("back" / "front"), or None on full steps."""
        c = self.config
        if interval_full(step, c.interval, c.first_enhance):
            return None
        if c.stage_switch and step >= c.stage_boundary * self.num_steps:
            return "front"
        return "back"

    def deciders(self, span: str):
        def decide(state: DeltaDiTState, block: torch.nn.Module, args: tuple, kwargs: dict):
            delta = state.delta.get(span)
            if self.cached_span(state.step) != span or delta is None or delta.shape != state.span_in.shape:
                return None
            return torch.zeros(state.span_in.shape[0], dtype=torch.bool, device=state.span_in.device)

        def finish(state: DeltaDiTState, out: torch.Tensor, rows) -> torch.Tensor:
            if rows is None:
                state.delta[span] = out - state.span_in
                return out
            return state.span_in + state.delta[span]

        def finish_encoder(state: DeltaDiTState, out: torch.Tensor, rows) -> torch.Tensor:
            if rows is None:
                state.delta_enc[span] = out - state.span_enc_in
                return out
            return state.span_enc_in + state.delta_enc[span]

        return decide, finish, finish_encoder


def delta_spans(transformer: torch.nn.Module, span_blocks: int | None = None) -> dict[str, tuple]:
    """The back and front spans whose deviations Δ-DiT caches (see DeltaDiTConfig)."""
    double = getattr(transformer, "transformer_blocks", None)
    single = getattr(transformer, "single_transformer_blocks", None)
    if span_blocks is None and isinstance(single, torch.nn.ModuleList) and len(single) > 0 and double:
        return {"front": tuple(double), "back": tuple(single)}
    blocks = block_layout(transformer).blocks
    n = span_blocks if span_blocks is not None else max(1, len(blocks) // 2)
    if not 0 < n < len(blocks):
        raise ValueError(
            f"Δ-DiT span of {n} blocks must leave at least one other block (model has {len(blocks)})"
        )
    return {"front": tuple(blocks[:n]), "back": tuple(blocks[-n:])}


def delta_span(transformer: torch.nn.Module, span_blocks: int | None = None) -> tuple[torch.nn.Module, ...]:
    """The back span (the re-implementation's only one): the single-stream stack if the model has one."""
    return delta_spans(transformer, span_blocks)["back"]


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

    def span_hooks(transformer: torch.nn.Module, manager: ContextStateManager, hook: DeltaDiTHook) -> None:
        spans = delta_spans(transformer, config.span_blocks)
        used = ("back", "front") if config.stage_switch else ("back",)
        if config.stage_switch and set(map(id, spans["front"])) & set(map(id, spans["back"])):
            raise ValueError(
                "Δ-DiT's front and back spans overlap: set span_blocks to at most half the blocks"
            )
        for name in used:
            attach_span(manager, spans[name], _BLOCK_HOOK, *hook.deciders(name))

    apply_cache_hooks(
        module,
        _STEP_HOOK,
        DeltaDiTState,
        lambda manager: DeltaDiTHook(manager, config),
        span_hooks,
        already="Δ-DiT is already applied to this transformer; call remove_delta_dit first",
    )


def remove_delta_dit(module: torch.nn.Module | object) -> None:
    """Remove Δ-DiT; the model runs uncached again."""
    remove_hooks(transformer_of(module), _STEP_HOOK, _BLOCK_HOOK)


def _apply(pipe, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    apply_delta_dit(pipe, DeltaDiTConfig(interval=int(knob), num_inference_steps=num_steps))


METHOD = CacheMethod(
    name="delta-dit",
    families=frozenset(FAMILIES),
    knob="interval",
    budget_limit="Δ-DiT only ever skips one span (FLUX: the single- or the double-stream stack; single-stack "
    "models: the back or the front half): the other blocks, embedding and output layers run at every step, "
    "so a sample costs at least 1 + (T-1)·f full steps (f = the non-span share of a step); the interval values 1..50 reach it",
    config_id=DeltaDiTConfig().config_id,
    never_skip=1,
    apply=_apply,
    remove=remove_delta_dit,
    cache_hits=cache_hits_counter(_STEP_HOOK),
    origin=(
        "schedule from the Δ-DiT re-implementation in Shenyi-Z/TaylorSeer; the paper's stage switch: back span "
        "(FLUX: single-stream stack; Wan/DiT: back half) before T/2, front span (double-stream / front half) after"
    ),
)
