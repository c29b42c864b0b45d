"""FORA (Selvaraju et al., 2024) as diffusers hooks: every block's attention and MLP outputs are reused between fixed refreshes."""

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
    StepHook,
    StepState,
    batch_rows,
    block_submodules,
    cache_hits_counter,
    interval_full,
    remove_hooks,
)
from .base import FAMILIES, CacheMethod

_STEP_HOOK = "fora_step_hook"
_MODULE_HOOK = "fora_module_hook"


@dataclass
class FORAConfig:
    """Configuration of FORA (Selvaraju et al., "FORA: Fast-Forward Caching in Diffusion Transformer
    Acceleration", 2024), ported from its re-implementation in `Shenyi-Z/TaylorSeer` (TaylorSeer-FLUX:
    `cal_type` with `fresh_ratio = 0`, the `FORA` branch of the double/single stream blocks).

    On full steps every block runs and the outputs of its attention and MLP submodules (`attn`, `attn1`, `attn2`,
    `ff`, `ff_context`, `ffn`, and the single-stream blocks' `proj_mlp` / `proj_out`) are cached; on the other
    steps those submodules return their cached outputs without running, while the cheap rest of the block (norms,
    timestep modulation, gates, residual adds) is recomputed with the current timestep — as the authors do, who
    cache the ungated module outputs and re-apply the current gates.

    Args:
        interval: N, a full step every N steps (FORA paper / TaylorSeer runs: N = 3 … 7). 1 never skips. The bench
            searches N = 1 … 50 (N ≥ T − 1 computes step 0 only; the rule allows any N).
        first_enhance: the first steps always full (TaylorSeer's FORA path: only step 0, i.e. 1).

    Fidelity (benchmarks/fidelity/taylorseer.py): the TaylorSeer FLUX code for BFL's `flux` package has no
    diffusers form; its diffusers FLUX forwards (`Shenyi-Z/TaylorSeer` @ 288776d, `TaylorSeers-Diffusers`) run in
    order 0 with FORA's one warm-up step reproduce FORA's rule (reuse of every block's ungated attention / MLP
    outputs) and give identical images and computed steps to this port on flux-tiny (T = 10, N = 3 and 4). The
    warm-up is 1 step on purpose: the codebase's `cal_type` gives FORA ("FORA: Uniform", `fresh_ratio == 0`)
    only step 0, whatever `first_enhance` says (3 applies to its ToCa / Taylor modes).

    Wan (benchmarks/fidelity/fora_wan.py): the codebase's FORA mode cannot run in its `TaylorSeer-Wan2.1` folder
    (its block forward implements only 'full' and 'Taylor' steps; FORA's cached steps get the type 'ToCa'), so
    their Taylor path at max_order 0 and first_enhance 1 — FORA's rule: full every N steps from step 0, each
    block's ungated self-attention / cross-attention / FFN outputs reused under the current gates — bound to
    their WanModel with wan-tiny's weights is the reference: T = 50, N = 3 / 5 / 7, 2 prompts: computed steps of
    both CFG branches identical, max |ours − theirs| ≤ 6.8e-6 (uncached floor 2.3e-6). No Wan-specific change.
    DiT (benchmarks/fidelity/fora_dit.py): likewise `TaylorSeer-DiT` (no FORA mode either) at max_order 0 and
    first_enhance 1 on their DiT class with dit-tiny's weights (`dit_official.py`): T = 50, N = 3 / 5 / 7,
    2 prompts, identical images (max |d| = 0) and computed steps. (DiT-ToCa's `fresh_ratio = 0` FORA variant
    counts its grid down from T − 1, i.e. aligns it to the last step; not the rule of FORA's paper or of this
    codebase's FLUX / Wan code, not followed.) No DiT-specific change.
    HunyuanVideo (benchmarks/fidelity/fora_hunyuan.py): `TaylorSeer-HunyuanVideo` @ 288776d runs its own FORA mode
    (`cache_init` mode 'original': fresh_ratio 0, max_order 0, first_enhance 1; cached steps take its 'ToCa' path
    with no fresh tokens) on its cached HunyuanVideo model with hunyuan-video-tiny's weights, driven by our
    pipeline (`hunyuan_official.py`, one cache per CFG branch): T = 50, N = 3 / 5 / 7, 2 prompts: computed steps
    of both branches identical, max |ours − theirs| ≤ 5.3e-6 (uncached floor 5.1e-6). No HunyuanVideo change.

    Least compute (`METHOD.budget_limit`): step 0, plus the recomputed norms / modulation and the embedding and output
    layers at every cached step. At T = 50: flux-tiny N = 4 → 13.6, N = 7 → 8.7 (K = 13 and K = 9 reached); dit-tiny
    N = 4 → 13.9, N = 5 → 11.0, N = 7 → 9.0 (K = 9 reached; K = 13 falls between two integer intervals).
    """

    interval: int = 3
    first_enhance: int = 1
    num_inference_steps: int = 50

    @property
    def config_id(self) -> str:
        """The fixed settings besides the knob and T, as the bench's budget cache keys them."""
        return f"fe{self.first_enhance};attn+mlp"


class FORAState(StepState):
    """Per cache context: whether this step is full, and each submodule's cached output."""

    def reset(self) -> None:
        super().reset()
        self.full = True
        self.outputs: dict[int, object] = {}


class FORAStepHook(StepHook):
    """On the transformer: decides full vs cached for the step (a fixed schedule)."""

    def __init__(self, manager: ContextStateManager, config: FORAConfig) -> None:
        super().__init__(manager, config.num_inference_steps)
        self.config = config

    def forward_step(self, module: torch.nn.Module, state: FORAState, args: tuple, kwargs: dict):
        state.full = (
            interval_full(state.step, self.config.interval, self.config.first_enhance) or not state.outputs
        )
        if not state.full:
            state.hits += batch_rows(args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)


class FORAModuleHook(ModelHook):
    """On an attention / MLP submodule: runs and caches on full steps, returns the cached output otherwise."""

    def __init__(self, manager: ContextStateManager, key: int) -> None:
        super().__init__()
        self.manager = manager
        self.key = key

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: FORAState = self.manager.get_state()
        if not state.full and self.key in state.outputs:
            return state.outputs[self.key]
        output = self.fn_ref.original_forward(*args, **kwargs)
        state.outputs[self.key] = output
        return output


def apply_fora(module: torch.nn.Module | object, config: FORAConfig) -> None:
    """Apply FORA to a diffusion transformer (or a pipeline's transformer).

    Example:
        ```python
        >>> from diffusers import FluxPipeline
        >>> from baselines.fora import FORAConfig, apply_fora

        >>> pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16)
        >>> apply_fora(pipe, FORAConfig(interval=3, num_inference_steps=50))
        >>> image = pipe("a red apple", num_inference_steps=50).images[0]
        ```
    """

    def module_hooks(transformer: torch.nn.Module, manager: ContextStateManager, _) -> None:
        children = [
            child for block in block_layout(transformer).blocks for _, child in block_submodules(block)
        ]
        for key, child in enumerate(children):
            register_hook(child, FORAModuleHook(manager, key), _MODULE_HOOK)

    apply_cache_hooks(
        module,
        _STEP_HOOK,
        FORAState,
        lambda manager: FORAStepHook(manager, config),
        module_hooks,
        already="FORA is already applied to this transformer; call remove_fora first",
    )


def remove_fora(module: torch.nn.Module | object) -> None:
    """Remove FORA; the model runs uncached again."""
    remove_hooks(transformer_of(module), _STEP_HOOK, _MODULE_HOOK)


def _apply(pipe, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    apply_fora(pipe, FORAConfig(interval=int(knob), num_inference_steps=num_steps))


METHOD = CacheMethod(
    name="fora",
    families=frozenset(FAMILIES),
    knob="interval",
    budget_limit="FORA computes its first_enhance=1 step in full, and cached steps still run the norms, modulation, "
    "embedding and output layers; the interval values 1..50 reach that floor",
    config_id=FORAConfig().config_id,
    never_skip=1,
    apply=_apply,
    remove=remove_fora,
    cache_hits=cache_hits_counter(_STEP_HOOK),
    origin="ported from the FORA re-implementation in Shenyi-Z/TaylorSeer; caches each block's attention/MLP outputs",
)
