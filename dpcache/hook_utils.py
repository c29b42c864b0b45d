"""Helpers shared by every cache hook (dpcache's own and the baselines'): per-context state, the transformer."""

from __future__ import annotations

import torch
from diffusers.hooks.hooks import CacheContext, HookRegistry, StateManager

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
