"""Machinery the ported baselines share: step tracking per cache context, block spans that skip per batch row."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState

from dpcache.adapters import timestep_value
from dpcache.diffusers_internals import BlockIO, unwrap_module
from dpcache.hook_utils import ContextStateManager, refresh_hook_tree, run_started, transformer_of

Rows = torch.Tensor | None  # bool mask over the batch rows to compute; None = every row


def rel_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per batch row: mean|a - b| / mean|b| (the relative L1 change every cache in this folder uses)."""
    dims = tuple(range(1, a.dim()))
    num = (a.float() - b.float()).abs().mean(dim=dims)
    return num / b.float().abs().mean(dim=dims).clamp_min(1e-12)


class StepState(BaseState):
    """Per cache context: the step index of the current run and how many (step, row) pairs came from cache."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.last_timestep: float | None = None
        self.hits = 0


class StepHook(ModelHook):
    """On the transformer: counts steps per cache context and starts a new run when the timestep goes up or
    `num_steps` steps are done (DiTPipeline never resets hook state); `last_hits` survives the pipeline's reset."""

    _is_stateful = True

    def __init__(self, manager: ContextStateManager, num_steps: int) -> None:
        super().__init__()
        self.manager = manager
        self.num_steps = num_steps
        self.last_hits: dict[str, int] = {}

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: StepState = self.manager.get_state()
        t = timestep_value(args, kwargs)
        if state.step >= self.num_steps or run_started(state.step, t, state.last_timestep):
            state.reset()
        output = self.forward_step(module, state, args, kwargs)
        state.last_timestep = t
        state.step += 1
        return output

    def forward_step(self, module: torch.nn.Module, state: StepState, args: tuple, kwargs: dict):
        """One transformer call of step `state.step`; subclasses that skip the whole model override this."""
        return self.fn_ref.original_forward(*args, **kwargs)

    def run_hits(self) -> dict[str, int]:
        """Per context, the (step, row) pairs served from cache in the latest run."""
        live = {name: s.hits for name, s in self.manager.states().items() if s.step > 0}
        return live or dict(self.last_hits)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.last_hits = {name: s.hits for name, s in self.manager.states().items() if s.step > 0}
        self.manager.reset()
        return module


class RowRunner:
    """Calls a forward on a subset of the batch rows; the other rows pass through unchanged (their input)."""

    _RESERVED = ("rotary", "freqs", "pos")

    def __init__(self, forward: Callable, batch_size: int, signature_of: Callable | None = None) -> None:
        self.forward = forward
        self.signature = inspect.signature(signature_of or forward)
        self.batch_size = batch_size

    def __call__(self, rows: torch.Tensor, args: tuple, kwargs: dict):
        idx = rows.nonzero().flatten()
        bound = self.signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            if (
                isinstance(value, torch.Tensor)
                and value.dim() > 0
                and value.shape[0] == self.batch_size
                and not any(r in name for r in self._RESERVED)
            ):
                bound.arguments[name] = value[idx]
        return idx, self.forward(*bound.args, **bound.kwargs)


class SpanState(StepState):
    """A StepState for caches that skip a span of blocks: the span input and the rows computed this step."""

    def reset(self) -> None:
        super().reset()
        self.span_in: torch.Tensor | None = None
        self.span_enc_in: torch.Tensor | None = None
        self.rows: Rows = None


class SpanBlockHook(ModelHook):
    """A block of the cached span. The span's first block asks `decide(state, module, args, kwargs)` which rows
    to compute (None = all); every block computes those rows and passes the others through (a skipped block
    does no work); the last block hands its hidden output to `finish(state, hidden, rows)`, which stores what
    the cache keeps and fills the skipped rows with the method's estimate."""

    def __init__(
        self,
        manager: ContextStateManager,
        first: bool,
        last: bool,
        decide: Callable | None = None,
        finish: Callable | None = None,
        finish_encoder: Callable | None = None,
    ) -> None:
        super().__init__()
        self.manager = manager
        self.first, self.last = first, last
        self.decide, self.finish, self.finish_encoder = decide, finish, finish_encoder

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.io = BlockIO(module)
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: SpanState = self.manager.get_state()
        hidden = self.io.hidden(args, kwargs)
        if self.first:
            state.span_in = hidden
            state.span_enc_in = self.io.encoder(args, kwargs)
            state.rows = self.decide(state, module, args, kwargs)
            if state.rows is not None and state.rows.all():
                state.rows = None
            if state.rows is not None:
                state.hits += int((~state.rows).sum())
        rows = state.rows
        if rows is None:
            output = self.fn_ref.original_forward(*args, **kwargs)
        else:
            encoder = self.io.encoder(args, kwargs)
            out_h, out_e = hidden, encoder
            if rows.any():
                block = unwrap_module(module)  # a compiled block's forward takes (*args, **kwargs)
                named = block.forward if block is not module else None
                idx, sub = RowRunner(self.fn_ref.original_forward, hidden.shape[0], named)(rows, args, kwargs)
                sub_h, sub_e = self.io.split(sub)
                out_h = hidden.clone()
                out_h[idx] = sub_h
                if encoder is not None:
                    out_e = encoder.clone()
                    out_e[idx] = sub_e
            output = self.io.build(out_h, out_e)
        if self.last:
            out_h, out_e = self.io.split(output)
            if self.finish_encoder is not None and out_e is not None:
                out_e = self.finish_encoder(state, out_e, rows)
            output = self.io.build(self.finish(state, out_h, rows), out_e)
        return output


def attach_span(
    manager: ContextStateManager,
    blocks: tuple[torch.nn.Module, ...],
    hook_name: str,
    decide: Callable,
    finish: Callable,
    finish_encoder: Callable | None = None,
) -> None:
    """Register a SpanBlockHook on every block of `blocks` (in execution order); `finish_encoder(state, enc,
    rows)`, if given, fills the text stream of two-stream blocks as `finish` fills the image stream."""
    for idx, block in enumerate(blocks):
        first, last = idx == 0, idx == len(blocks) - 1
        hook = SpanBlockHook(
            manager,
            first,
            last,
            decide if first else None,
            finish if last else None,
            finish_encoder if last else None,
        )
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, hook_name)


def remove_hooks(transformer: torch.nn.Module, step_hook_name: str, block_hook_name: str) -> None:
    """Remove a baseline's step hook from the transformer and its block hooks from every submodule."""
    HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(step_hook_name, recurse=False)
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and block_hook_name in registry.hooks:
            registry.remove_hook(block_hook_name, recurse=False)
    refresh_hook_tree(transformer)


def step_hook_of(transformer: torch.nn.Module, name: str) -> StepHook | None:
    """The baseline's step hook on a transformer, if applied."""
    return HookRegistry.check_if_exists_or_initialize(transformer).get_hook(name)


def cache_hits_counter(step_hook_name: str):
    """`cache_hits(pipe)` for a registered method: (step, branch) calls served from cache in the last run."""

    def cache_hits(pipe) -> int:
        hook = step_hook_of(transformer_of(pipe), step_hook_name)
        return sum(hook.run_hits().values()) if hook is not None else 0

    return cache_hits


def fill_rows(computed: torch.Tensor, estimate: torch.Tensor, rows: Rows) -> torch.Tensor:
    """The span output: computed rows from `computed`, the skipped rows from `estimate`."""
    if rows is None:
        return computed
    return torch.where(rows.view(-1, *([1] * (computed.dim() - 1))), computed, estimate.to(computed.dtype))


ATTENTION_CHILDREN = ("attn", "attn1", "attn2")
TOKENWISE_CHILDREN = ("ff", "ff_context", "ffn", "proj_mlp", "proj_out")


def block_submodules(block: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """A block's compute-heavy children: attention modules and token-wise MLP / projection modules, by name
    (FLUX / HunyuanVideo double and single blocks, Wan blocks, DiT's BasicTransformerBlock)."""
    return [
        (name, child)
        for name, child in unwrap_module(block).named_children()
        if name in ATTENTION_CHILDREN + TOKENWISE_CHILDREN and child is not None
    ]


def interval_full(step: int, interval: int, first_enhance: int) -> bool:
    """The fixed schedule of FORA / ToCa / Δ-DiT (TaylorSeer's `cal_type`): the first `first_enhance` steps, then
    every `interval`-th step after the last of them."""
    return step < first_enhance or (step - (first_enhance - 1)) % max(interval, 1) == 0


def batch_rows(args: tuple, kwargs: dict) -> int:
    """The batch size of a transformer call (its `hidden_states`)."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    return hidden.shape[0] if isinstance(hidden, torch.Tensor) else 1
