"""Helpers shared by every cache hook (dpcache's own and the baselines'): per-context state, the transformer."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from diffusers.hooks.hooks import BaseState, CacheContext, HookRegistry, ModelHook, StateManager

DEFAULT_CONTEXT = "default"


class ContextStateManager(StateManager):
    """A diffusers StateManager (one state per `cache_context`, e.g. per CFG branch) that falls back to one
    default context when the caller set none — DiTPipeline calls its transformer without a context."""

    def get_state(self):
        if self._context is None:
            self._context = CacheContext(DEFAULT_CONTEXT)
        return super().get_state()

    @property
    def context_name(self) -> str:
        return self._context.name if self._context is not None else DEFAULT_CONTEXT

    def states(self) -> dict[str, object]:
        """Every context's state, by context name."""
        return dict(self._state_cache)


def transformer_of(module: torch.nn.Module | object) -> torch.nn.Module:
    """The denoiser of a pipeline (anything with `.transformer` and `.scheduler`), or the module itself."""
    return module.transformer if hasattr(module, "transformer") and hasattr(module, "scheduler") else module


def refresh_hook_tree(module: torch.nn.Module) -> None:
    """Call after adding or removing hooks on sub-modules: diffusers caches the list of child registries
    that `cache_context` updates, and a stale list would leave new stateful hooks without a context."""
    HookRegistry.check_if_exists_or_initialize(module).invalidate_child_registries_cache()


def run_started(step: int, timestep: float | None, last_timestep: float | None) -> bool:
    """The one run-start rule of DPCache and the baselines, seen from a transformer call: a context already past
    step 0 gets a higher timestep than its previous call (diffusers' schedulers count down), so a new sampling
    run began — for pipelines whose hook state is never reset between calls (DiTPipeline) or a bare transformer.
    With the pipeline at hand, `watch_run_start` marks the start earlier, when the scheduler sets its timesteps."""
    return step > 0 and timestep is not None and last_timestep is not None and timestep > last_timestep


def watch_run_start(scheduler: object, on_start: Callable[[int], None], tag: str) -> None:
    """Call `on_start(len(scheduler.timesteps))` after each `scheduler.set_timesteps` (a pipeline call starts);
    `tag` names the watcher for `unwatch_run_start`."""
    original = scheduler.set_timesteps

    @functools.wraps(original)  # pipelines inspect its signature (e.g. for `sigmas`)
    def set_timesteps(*args, **kwargs):
        out = original(*args, **kwargs)
        on_start(len(scheduler.timesteps))
        return out

    setattr(set_timesteps, tag, original)
    scheduler.set_timesteps = set_timesteps


def unwatch_run_start(scheduler: object | None, tag: str) -> None:
    """Undo `watch_run_start(…, tag)` (nothing if that watcher is not installed)."""
    if scheduler is not None and hasattr(scheduler.set_timesteps, tag):
        del scheduler.set_timesteps


def register_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register `hook` on `module` under `name` (a block or a submodule of the cached transformer)."""
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def apply_cache_hooks(
    module: torch.nn.Module | object,
    step_hook_name: str,
    state: Callable[[], BaseState],
    step_hook: Callable[[ContextStateManager], ModelHook],
    blocks: Callable[[torch.nn.Module, ContextStateManager, ModelHook], None] | None = None,
    *,
    already: str,
    error: type[Exception] = RuntimeError,
) -> tuple[torch.nn.Module, ModelHook]:
    """The skeleton every cache's `apply_*` shares (as diffusers' `apply_first_block_cache`): on the transformer
    (or a pipeline's), refuse a second application (`error(already)`), make one state per cache context, register
    the step hook, let `blocks(transformer, manager, hook)` register the block / submodule hooks, and refresh the
    hook tree so the new stateful hooks get the cache context. Returns (transformer, step hook)."""
    transformer = transformer_of(module)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(step_hook_name) is not None:
        raise error(already)
    manager = ContextStateManager(state)
    hook = step_hook(manager)
    registry.register_hook(hook, step_hook_name)
    if blocks is not None:
        blocks(transformer, manager, hook)
    refresh_hook_tree(transformer)
    return transformer, hook
