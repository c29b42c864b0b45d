"""Δ-DiT (Chen et al., 2024) as diffusers hooks: the back blocks' output − input deviation is reused between fixed refreshes."""

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
    SpanState,
    StepHook,
    attach_span,
    batch_rows,
    block_submodules,
    cache_hits_counter,
    interval_full,
    remove_hooks,
)
from .base import FAMILIES, CacheMethod

_STEP_HOOK = "delta_dit_step_hook"
_BLOCK_HOOK = "delta_dit_block_hook"
_MODULE_HOOK = "delta_dit_module_hook"


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

    Fidelity: the paper's code was never released; the public code is the re-implementation in Shenyi-Z/TaylorSeer
    @ 288776d (the "Delta" mode of its BFL `flux` package), and the port is checked against it by running it on
    flux-tiny through our FluxPipeline (`benchmarks/fidelity/bfl_flux.py`; `python -m benchmarks.fidelity.run
    delta_dit`, T = 10, intervals 1–4, two prompts). Set to the re-implementation (`stage_switch=False,
    reimpl_reuse_steps=True`) the port equals it to 4.2e-6 (images in [0, 1]) at every interval, computed steps
    identical (T = 50, intervals 3 / 11: 2.7e-6). The defaults differ from it on purpose, towards the paper: (1) the paper's stage switch (the
    re-implementation caches the single-stream stack at every cached step; from T/2 on ours caches the front,
    double-stream span: max |d| 0.21–0.43 at T = 10); (2) its reuse steps are not taken: its `cal_type`, shared
    with its ToCa mode, makes every second cached step after a full one (intervals ≥ 3) a 'ToCa' step with no
    fresh tokens — every block's attention / MLP output reused from the last step it ran, with the current
    modulation, and Δ re-measured — a FORA step that is not in the paper (without them: max |d| 0.12–0.16 at
    intervals 3–4, identical at ≤ 2). Effect of (2), flux-tiny T = 50, PSNR against full compute
    (`benchmarks/fidelity/effect.py`, effects.jsonl "re-impl." rows): the reuse steps make a step cheaper at about
    the same quality (interval 3: K = 22.9, 42.6 dB vs the default's K = 33.6, 42.7 dB) and lower the least
    compute from K = 25.8 to 9.65 (K = 13 reachable: 26.1 dB at interval 11 over two prompts; K = 9 is not).
    Interpretation: the boundary `b` is a tuned hyperparameter in the paper; 0.5 · T here (the steps' midpoint).

    Args:
        interval: N, a full step every N steps (authors' FLUX setting: 3). 1 never skips. The bench searches
            N = 1 … 50 (N ≥ T − 1 refreshes at step 0 only; the rule allows any N).
        first_enhance: the first steps always full (1).
        span_blocks: how many blocks form each span on single-stack models (None: half of them).
        stage_switch: cache the back span before the boundary and the front span after it (the paper); False:
            the back span at every cached step (the TaylorSeer re-implementation, the former port).
        stage_boundary: the switch, as a fraction of T.
        reimpl_reuse_steps: also take the re-implementation's reuse steps (see Fidelity); with
            `stage_switch=False` the port is the TaylorSeer re-implementation.

    Least compute (`METHOD.budget_limit`, defaults): only one span is ever skipped — the other half of the model and the
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
    reimpl_reuse_steps: bool = False

    @property
    def config_id(self) -> str:
        """The fixed settings besides the knob and T, as the bench's budget cache keys them."""
        span = "single-or-back-half" if self.span_blocks is None else str(self.span_blocks)
        stage = f"stage-switch{self.stage_boundary}" if self.stage_switch else "no-stage-switch"
        reuse = ";reimpl-reuse-steps" if self.reimpl_reuse_steps else ""
        return f"fe{self.first_enhance};span-{span};{stage}{reuse}"


class DeltaDiTState(SpanState):
    """Per cache context: the cached deviations Δ of each span (image stream; text stream of two-stream spans)."""

    def reset(self) -> None:
        super().reset()
        self.delta: dict[str, torch.Tensor] = {}
        self.delta_enc: dict[str, torch.Tensor] = {}
        self.reuse = False  # a re-implementation reuse step (`reimpl_reuse_steps`)
        self.outputs: dict[int, object] = {}  # each block submodule's output, last time it ran


class DeltaDiTHook(StepHook):
    """On the transformer: step tracking; per span, `decide` (its first block) and `finish` (its last block)."""

    def __init__(self, manager: ContextStateManager, config: DeltaDiTConfig) -> None:
        super().__init__(manager, config.num_inference_steps)
        self.config = config

    def step_kind(self, step: int) -> str:
        """ "full", "delta" (a span returns in + Δ) or "reuse" (`reimpl_reuse_steps`: the re-implementation's
        `cal_type` makes every second cached step after a full one a 'ToCa' step with no fresh tokens)."""
        c = self.config
        if interval_full(step, c.interval, c.first_enhance):
            return "full"
        since_full = (step - (c.first_enhance - 1)) % max(c.interval, 1)
        return "reuse" if c.reimpl_reuse_steps and since_full % 2 == 0 else "delta"

    def forward_step(self, module: torch.nn.Module, state: DeltaDiTState, args: tuple, kwargs: dict):
        state.reuse = self.step_kind(state.step) == "reuse" and bool(state.outputs)
        if state.reuse:
            state.hits += batch_rows(args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)

    def cached_span(self, step: int) -> str | None:
        """Which span a step reuses ("back" / "front"), or None on full (and reuse) steps."""
        c = self.config
        if self.step_kind(step) != "delta":
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


class ReuseHook(ModelHook):
    """On an attention / MLP / projection module of a block (`reimpl_reuse_steps` only): on reuse steps its output
    from the last step it ran, otherwise computed and kept (a block skipped inside a Δ span does not run)."""

    def __init__(self, manager: ContextStateManager, key: int) -> None:
        super().__init__()
        self.manager, self.key = manager, key

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: DeltaDiTState = self.manager.get_state()
        if state.reuse and self.key in state.outputs:
            return state.outputs[self.key]
        output = self.fn_ref.original_forward(*args, **kwargs)
        state.outputs[self.key] = output
        return output


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
        if config.reimpl_reuse_steps:
            key = 0
            for block in block_layout(transformer).blocks:
                for _, child in block_submodules(block):
                    register_hook(child, ReuseHook(manager, key), _MODULE_HOOK)
                    key += 1

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
    remove_hooks(transformer_of(module), _STEP_HOOK, _MODULE_HOOK)  # the step hook is gone: a no-op for it


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
