"""Thin runtime shared by the wrapped caches (diffusers hooks, cache-dit): contexts, run resets, hit accounting."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.hooks import HookRegistry

from dpcache.adapters import block_layout
from dpcache.diffusers_internals import set_cache_context
from dpcache.hook_utils import DEFAULT_CONTEXT, ContextStateManager, unwatch_run_start, watch_run_start

_ATTR = "_bench_wrapped_run"
_RUN_WATCH = "_bench_original"  # marks our `set_timesteps` watcher on the scheduler


def first_linear(module: torch.nn.Module) -> torch.nn.Module:
    """The first `nn.Linear` inside `module`: it runs exactly when the module's own forward really runs."""
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            return sub
    raise TypeError(f"{type(module).__name__} has no Linear layer to count its executions by")


def hooked_modules(transformer: torch.nn.Module, hook_names: Iterable[str]) -> list[torch.nn.Module]:
    """Every submodule of `transformer` carrying one of the named diffusers hooks."""
    names = set(hook_names)
    found = []
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and names & set(registry.hooks):
            found.append(module)
    return found


def block_modules(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks in execution order (the unit block-level caches skip)."""
    return list(block_layout(transformer).blocks)


class WrappedRun:
    """What a wrapped cache needs around the transformer, installed on one pipeline.

    * DiT's pipeline calls its transformer without `cache_context`: each call then runs in the context
      `"default"` (diffusers' stateful hooks refuse to run without one).
    * With `step_metadata`, contexts that lack them get `step_index`, `sigma` and `num_inference_steps` from the
      scheduler (only WanPipeline passes them; SeaCache needs them).
    * Every pipeline call starts from clean hook state (the scheduler's `set_timesteps` marks the start).
    * Cache hits: a (step, context) call is a hit when at least one probe module did not run its own forward
      (counted by a forward hook on the probe's first Linear, so it is the real computation that is counted).
    """

    def __init__(
        self,
        pipe: Any,
        probes: Sequence[torch.nn.Module],
        step_metadata: bool = False,
        reset: Callable[[], None] | None = None,
    ) -> None:
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.step_metadata = step_metadata
        self.reset_fn = reset or self._reset_diffusers_hooks
        self.num_probes = len(probes)
        self.hits: dict[str, list[int]] = {}
        self.steps: dict[str, int] = {}
        self.current_timestep: float = 1000.0
        self._name: str | None = None
        self._default_set = False
        self._executed = 0
        self._handles = [first_linear(p).register_forward_hook(self._count) for p in probes]
        self._handles.append(self.transformer.register_forward_pre_hook(self._pre, with_kwargs=True))
        self._handles.append(self.transformer.register_forward_hook(self._post))
        self._has_context = hasattr(self.transformer, "cache_context")
        if self._has_context:
            self.transformer.cache_context = self._cache_context_wrapper(type(self.transformer).cache_context)
        watch_run_start(pipe.scheduler, lambda num_steps: self.begin_run(), _RUN_WATCH)
        setattr(self.transformer, _ATTR, self)

    # --- run bookkeeping -------------------------------------------------------------------------------------
    def _reset_diffusers_hooks(self) -> None:
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        registry.invalidate_child_registries_cache()
        registry.reset_stateful_hooks(recurse=True)

    def begin_run(self) -> None:
        """A pipeline call starts: clean hook state and fresh counters."""
        self.reset_fn()
        self.hits, self.steps = {}, {}

    def _step_of(self, name: str) -> int:
        return self.steps.get(name, 0)

    def _cache_context_wrapper(self, unbound: Callable) -> Callable:
        transformer = self.transformer

        @contextmanager
        def cache_context(name: str, **kwargs):
            if self.step_metadata and kwargs.get("step_index") is None:
                step = self._step_of(name)
                sched = self.pipe.scheduler
                kwargs["step_index"] = step
                kwargs["num_inference_steps"] = len(sched.timesteps)
                kwargs["sigma"] = float(sched.sigmas[min(step, len(sched.sigmas) - 1)])
            self._name = name
            try:
                with unbound(transformer, name, **kwargs):
                    yield
            finally:
                self._name = None

        return cache_context

    def _pre(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not self._has_context or self._name is None:
            self._name = DEFAULT_CONTEXT
            self._default_set = True
            set_cache_context(module, DEFAULT_CONTEXT)
        timesteps = self.pipe.scheduler.timesteps
        step = self._step_of(self._name)
        if timesteps is not None and len(timesteps):
            self.current_timestep = float(timesteps[min(step, len(timesteps) - 1)])
        self._executed = 0

    def _post(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        name = self._name or DEFAULT_CONTEXT
        step = self._step_of(name)
        if self._executed < self.num_probes:
            self.hits.setdefault(name, []).append(step)
        else:
            self.hits.setdefault(name, [])
        self.steps[name] = step + 1
        if self._default_set:
            set_cache_context(module, None)
            self._default_set = False
            self._name = None

    def _count(self, *_: Any) -> None:
        self._executed += 1

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        if self._has_context and "cache_context" in vars(self.transformer):
            del self.transformer.cache_context
        unwatch_run_start(self.pipe.scheduler, _RUN_WATCH)
        if hasattr(self.transformer, _ATTR):
            delattr(self.transformer, _ATTR)


def install(pipe: Any, probes: Sequence[torch.nn.Module], **kwargs: Any) -> WrappedRun:
    """Attach the runtime to `pipe` (after the cache's hooks are applied)."""
    if getattr(pipe.transformer, _ATTR, None) is not None:
        raise RuntimeError("a wrapped cache is already applied to this pipeline; remove it first")
    HookRegistry.check_if_exists_or_initialize(pipe.transformer).invalidate_child_registries_cache()
    return WrappedRun(pipe, probes, **kwargs)


def run_of(pipe: Any) -> WrappedRun:
    run = getattr(pipe.transformer, _ATTR, None)
    if run is None:
        raise RuntimeError("no wrapped cache is applied to this pipeline")
    return run


def cache_hits(pipe: Any) -> int:
    """(step, context) calls of the last pipeline call that skipped work."""
    return sum(len(v) for v in run_of(pipe).hits.values())


def hit_steps(pipe: Any) -> dict[str, list[int]]:
    """Per cache context (CFG branch), the steps of the last call that were (partly) served from cache."""
    return {k: list(v) for k, v in run_of(pipe).hits.items()}


def uninstall(pipe: Any, hook_names: Iterable[str] = ()) -> None:
    """Remove the runtime and the named diffusers hooks (on the transformer and all its submodules)."""
    run = getattr(pipe.transformer, _ATTR, None)
    if run is not None:
        run.close()
    transformer = pipe.transformer
    if getattr(transformer, "_cache_config", None) is not None:
        transformer.disable_cache()
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in hook_names:
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()


def apply_config(
    transformer: torch.nn.Module, config: Any, apply_fn: Callable[[torch.nn.Module, Any], None]
) -> None:
    """`transformer.enable_cache(config)` where the model has it, else diffusers' `apply_*` (DiT)."""
    if hasattr(transformer, "enable_cache"):
        transformer.enable_cache(config)
    else:
        apply_fn(transformer, config)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def per_context_hook(hook_cls: type, state_cls: type) -> type:
    """A subclass of a diffusers hook whose `self.state` is kept per cache context (CFG branch).

    PAB's and FasterCache's hooks hold one state per module; pipelines that run CFG as two calls (Flux true CFG,
    Wan, HunyuanVideo) would then share it between cond and uncond (the uncond call reuses the cond attention).
    The subclass keeps the hook's rule untouched and only looks its state up per context.
    """

    class PerContextHook(hook_cls):
        _is_stateful = True

        def initialize_hook(self, module):
            self._contexts = ContextStateManager(state_cls)
            return super().initialize_hook(module)

        @property
        def state(self):
            return self._contexts.get_state()

        @state.setter
        def state(
            self, value
        ) -> None:  # the parent's initialize_hook assigns a fresh state: per context instead
            pass

        def reset_state(self, module):
            self._contexts.reset()
            return module

    PerContextHook.__name__ = PerContextHook.__qualname__ = f"PerContext{hook_cls.__name__}"
    return PerContextHook


def timestep_callback(pipe: Any) -> Callable[[], float]:
    """The current scheduler timestep (0 … 1000) of the running call, for PAB / FasterCache."""
    return lambda: run_of(pipe).current_timestep
