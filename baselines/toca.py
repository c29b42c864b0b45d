"""ToCa (Zou et al., ICLR 2025) as diffusers hooks: cached attention and MLP outputs, a fraction of tokens refreshed by score."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook

from dpcache.adapters import block_layout
from dpcache.hook_utils import ContextStateManager, refresh_hook_tree, transformer_of

from ._stack_hooks import (
    TOKENWISE_CHILDREN,
    StepHook,
    StepState,
    batch_rows,
    block_submodules,
    cache_hits_counter,
    interval_full,
    remove_hooks,
)
from .base import FAMILIES, CacheMethod, register

_STEP_HOOK = "toca_step_hook"
_MODULE_HOOK = "toca_module_hook"


@dataclass
class ToCaConfig:
    """Configuration of ToCa (Zou et al., "Accelerating Diffusion Transformers with Token-wise Feature Caching",
    ICLR 2025), ported from its re-implementation in `Shenyi-Z/TaylorSeer` (TaylorSeer-FLUX `cache_init` mode
    "ToCa": `fresh_ratio = 0.1`, `first_enhance = 3`; `cal_type`, `cache_cutfresh`, `update_cache`).

    Full steps: the first `first_enhance` steps, then every `interval`-th. On the other (ToCa) steps each block's
    attention outputs are reused from the cache (as in the authors' FLUX blocks), and each token-wise module (MLPs
    `ff`, `ff_context`, `ffn`; single-stream `proj_mlp`, `proj_out`) is recomputed for the `fresh_ratio` share of
    tokens with the highest score only — a real partial computation the FLOP counter sees — and those tokens are
    written into its cache; the other tokens keep their cached outputs.

    Simplified against the authors: the score is the "similarity" option of their code (1 − cosine similarity of
    the module's current input token to the input it had when last refreshed) instead of the attention-map score
    (which needs attention maps from a custom processor); the layer/stream-dependent fresh-ratio schedule and the
    cache-age bonus (`soft_fresh_weight`, 0 in their ToCa mode) are not ported: the fresh ratio is constant.

    Args:
        interval: N, a full step every N steps. 1 never skips. The bench searches N = 1 … 50 (the rule allows any
            N; N ≥ T − 3 computes only the warm-up). The authors report N up to 12 (ToCa N=12 on FLUX).
        fresh_ratio: share of tokens recomputed per token-wise module on ToCa steps (authors: 0.1).
        first_enhance: the first steps always full (authors' ToCa mode: 3).

    Least compute (`METHOD.budget_limit`): the `first_enhance` steps, plus every ToCa step's partial work (the fresh
    tokens' MLP rows, the norms, modulation, embedding and output layers) — at T = 50 on flux-tiny K ≥ 6.8
    (N = 50), dit-tiny K ≥ 7.0. K = 13 and K = 9 are reached on both (flux-tiny N = 6 → 13.3, N = 18 → 8.7;
    dit-tiny N = 6 → 13.4, N = 18 → 8.8); K = 9 needs intervals beyond the former 1 … 10.
    """

    interval: int = 5
    fresh_ratio: float = 0.1
    first_enhance: int = 3
    num_inference_steps: int = 50


class ToCaState(StepState):
    """Per cache context: whether this step is full, each module's cached output and (token-wise) cached input."""

    def reset(self) -> None:
        super().reset()
        self.full = True
        self.outputs: dict[int, object] = {}
        self.inputs: dict[int, torch.Tensor] = {}


class ToCaStepHook(StepHook):
    """On the transformer: decides full vs ToCa for the step (a fixed schedule)."""

    def __init__(self, manager: ContextStateManager, config: ToCaConfig) -> None:
        super().__init__(manager, config.num_inference_steps)
        self.config = config

    def forward_step(self, module: torch.nn.Module, state: ToCaState, args: tuple, kwargs: dict):
        state.full = (
            interval_full(state.step, self.config.interval, self.config.first_enhance) or not state.outputs
        )
        if not state.full:
            state.hits += batch_rows(args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)


class ToCaModuleHook(ModelHook):
    """On an attention (reused whole) or token-wise module (fresh tokens recomputed, the rest reused)."""

    def __init__(self, manager: ContextStateManager, key: int, tokenwise: bool, fresh_ratio: float) -> None:
        super().__init__()
        self.manager = manager
        self.key = key
        self.tokenwise = tokenwise
        self.fresh_ratio = fresh_ratio

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: ToCaState = self.manager.get_state()
        x = args[0] if args else kwargs.get("hidden_states")
        if state.full or self.key not in state.outputs:
            output = self.fn_ref.original_forward(*args, **kwargs)
            state.outputs[self.key] = output
            if self.tokenwise and isinstance(x, torch.Tensor):
                state.inputs[self.key] = x
            return output
        cached = state.outputs[self.key]
        if not self.tokenwise or not isinstance(cached, torch.Tensor) or x is None or x.dim() != 3:
            return cached
        fresh = int(self.fresh_ratio * x.shape[1])
        if fresh == 0:
            return cached
        score = 1 - F.cosine_similarity(x.float(), state.inputs[self.key].float(), dim=-1)  # (B, N)
        idx = score.topk(fresh, dim=1).indices.unsqueeze(-1)  # (B, k, 1)
        fresh_x = x.gather(1, idx.expand(-1, -1, x.shape[-1]))
        rest = args[1:]
        fresh_out = (
            self.fn_ref.original_forward(fresh_x, *rest, **kwargs)
            if args
            else (self.fn_ref.original_forward(*args, **{**kwargs, "hidden_states": fresh_x}))
        )
        output = cached.scatter(1, idx.expand(-1, -1, cached.shape[-1]), fresh_out.to(cached.dtype))
        state.outputs[self.key] = output
        state.inputs[self.key] = state.inputs[self.key].scatter(1, idx.expand(-1, -1, x.shape[-1]), fresh_x)
        return output


def apply_toca(module: torch.nn.Module | object, config: ToCaConfig) -> None:
    """Apply ToCa to a diffusion transformer (or a pipeline's transformer).

    Example:
        ```python
        >>> from diffusers import FluxPipeline
        >>> from baselines.toca import ToCaConfig, apply_toca

        >>> pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16)
        >>> apply_toca(pipe, ToCaConfig(interval=5, fresh_ratio=0.1, num_inference_steps=50))
        >>> image = pipe("a red apple", num_inference_steps=50).images[0]
        ```
    """
    transformer = transformer_of(module)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(_STEP_HOOK) is not None:
        raise RuntimeError("ToCa is already applied to this transformer; call remove_toca first")
    manager = ContextStateManager(ToCaState)
    registry.register_hook(ToCaStepHook(manager, config), _STEP_HOOK)
    key = 0
    for block in block_layout(transformer).blocks:
        for name, child in block_submodules(block):
            hook = ToCaModuleHook(manager, key, name in TOKENWISE_CHILDREN, config.fresh_ratio)
            HookRegistry.check_if_exists_or_initialize(child).register_hook(hook, _MODULE_HOOK)
            key += 1
    refresh_hook_tree(transformer)


def remove_toca(module: torch.nn.Module | object) -> None:
    """Remove ToCa; the model runs uncached again."""
    remove_hooks(transformer_of(module), _STEP_HOOK, _MODULE_HOOK)


def _apply(pipe, knob: float, num_steps: int, artifacts: dict | None = None) -> None:
    apply_toca(pipe, ToCaConfig(interval=int(knob), num_inference_steps=num_steps))


METHOD = register(
    CacheMethod(
        name="toca",
        families=frozenset(FAMILIES),
        knob="interval",
        knob_values=tuple(range(1, 51)),
        budget_limit="ToCa computes its first_enhance=3 steps in full and every ToCa step still recomputes "
        "fresh_ratio=0.1 of the tokens of each MLP plus the norms, modulation, embedding and output layers; "
        "the interval values 1..50 reach that floor",
        config_id="fe3;fresh0.1;similarity",
        compute_grows_with_knob=False,
        never_skip=1,
        apply=_apply,
        remove=remove_toca,
        cache_hits=cache_hits_counter(_STEP_HOOK),
        origin=(
            "ported from the ToCa re-implementation in Shenyi-Z/TaylorSeer; simplified: similarity score instead of "
            "attention-map score, constant fresh ratio 0.1; ToCa steps are partial compute (fresh tokens of MLPs)"
        ),
    )
)
