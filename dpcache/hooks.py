"""DPCache as a diffusers hook: run the block stack only at planned key steps, predict it everywhere else."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState

from .adapters import block_layout, timestep_value
from .diffusers_internals import BlockIO
from .errors import DPCacheError, ScheduleMismatchError
from .hook_utils import (
    ContextStateManager,
    apply_cache_hooks,
    refresh_hook_tree,
    register_hook,
    run_started,
    transformer_of,
    unwatch_run_start,
    watch_run_start,
)
from .predictors import Predictor
from .resolve import load_schedule_file, resolve, resolve_schedule

logger = logging.getLogger(__name__)

_STEP_HOOK = "dpcache_step_hook"
_BLOCK_HOOK = "dpcache_block_hook"
_RUN_WATCH = "_dpcache_original"  # marks our `set_timesteps` watcher on the scheduler


@dataclass
class DPCacheConfig:
    """Configuration of DPCache (Cui et al., "Denoising as Path Planning", arXiv 2602.22654).

    Give either `schedule` (the key steps) or `cost` + `budget` (the schedule is then planned by dynamic
    programming on the Path-Aware Cost Tensor).

    Args:
        num_inference_steps: T, the pipeline's step count; a call with another count raises.
        budget: K, the number of key (full-compute) steps, mandatory ones included.
        schedule: explicit key steps (0 … T-1, execution order); overrides `cost` + `budget`.
        cost: a `CostTensor` or the path of a `.safetensors` cost tensor.
        first_full_steps: steps 0 … M-1 are always key steps (released: FLUX 3, Wan 4).
        last_full_steps: the final L steps are always key steps (released: FLUX 0, Wan 1).
        order: Taylor order of the default predictor (default 2, as released; with a schedule file, the
            file's order, and a different explicit order is refused).
        predictor: a custom `Predictor`; it must be the one the cost tensor was calibrated with.
        solver: "official" (the released recurrence, default: its images were better on calibration prompts)
            or "exact" (the true minimum of the path cost, which is a proxy of the image error).
        max_jump: longest distance between key steps (default `max(int(0.3 T), 1)`).
        segment_orders: with `schedule`, the Taylor order of the predictions after each key step (one per
            key step, each <= `order`); default: `order` everywhere.
        schedule_file: a file written by `dpcache tune`: its key steps, per-segment orders and first/last
            full steps are used; it is refused (naming the field) for another T, predictor or `model_id`.
        model_id: the model this runs on, checked against a schedule file when given.
    """

    num_inference_steps: int = 50
    budget: int | None = None
    schedule: Sequence[int] | None = None
    cost: object | None = None
    first_full_steps: int = 3
    last_full_steps: int = 0
    order: int | None = None
    predictor: Predictor | None = None
    solver: str = "official"
    max_jump: int | None = None
    segment_orders: Sequence[int] | None = None
    schedule_file: str | os.PathLike | None = None
    model_id: str | None = None

    def __post_init__(self) -> None:
        if self.schedule_file is not None:
            load_schedule_file(self)  # fail at construction, before any model runs

    def resolve_schedule(self) -> tuple[int, ...]:
        """The sorted key steps (`dpcache.resolve.resolve_schedule`: plan before loading a model to fail fast)."""
        return resolve_schedule(self)


@dataclass
class RunStats:
    """What one sampling run of one cache context did: key steps computed and steps predicted."""

    computed_steps: list[int] = field(default_factory=list)
    predicted_steps: list[int] = field(default_factory=list)

    @property
    def cache_hits(self) -> int:
        return len(self.predicted_steps)

    @property
    def steps(self) -> int:
        return len(self.computed_steps) + len(self.predicted_steps)


class DPCacheState(BaseState):
    """Per cache context (CFG branch): the step counter, the predictor and this run's statistics."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.reset()

    def reset(self) -> None:
        self.predictor.reset()
        self.step = 0
        self.last_timestep: float | None = None
        self.compute = True
        self.stats = RunStats()


class DPCacheStepHook(ModelHook):
    """On the transformer: tracks the step of each cache context and decides compute vs predict."""

    _is_stateful = True

    def __init__(self, manager: ContextStateManager, key_steps: tuple[int, ...], num_steps: int) -> None:
        super().__init__()
        self.manager = manager
        self.key_steps = frozenset(key_steps)
        self.schedule = key_steps
        self.num_steps = num_steps
        self.last_runs: dict[str, RunStats] = {}

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        context = self.manager._context
        state: DPCacheState = self.manager.get_state()
        name = self.manager.context.name
        t = timestep_value(args, kwargs)
        announced = getattr(context, "num_inference_steps", None)
        if announced is not None and announced != self.num_steps:
            raise ScheduleMismatchError(self._mismatch(announced))
        if run_started(state.step, t, state.last_timestep):
            self._finish_run(name, state, strict=False)  # the timestep went up: a new sampling run began
        if state.step >= self.num_steps:
            raise ScheduleMismatchError(self._mismatch(f"more than {self.num_steps}"))
        state.compute = state.step in self.key_steps
        (state.stats.computed_steps if state.compute else state.stats.predicted_steps).append(state.step)
        output = self.fn_ref.original_forward(*args, **kwargs)
        state.last_timestep = t
        state.step += 1
        if state.step == self.num_steps:
            self._finish_run(name, state, strict=True)
        return output

    def _mismatch(self, steps: object) -> str:
        return (
            f"the pipeline runs {steps} steps but the DPCache schedule {list(self.schedule)} was planned for "
            f"T={self.num_steps}; plan again for this step count (and calibrate for it if the cost tensor's T differs)"
        )

    def _finish_run(self, name: str, state: DPCacheState, strict: bool) -> None:
        done = state.step
        self.last_runs[name] = state.stats
        state.reset()
        if 0 < done < self.num_steps:
            if strict:
                raise ScheduleMismatchError(self._mismatch(done))
            logger.warning(
                "DPCache: a run of context %r stopped after %d of %d steps", name, done, self.num_steps
            )

    def begin_run(self, num_steps: int) -> None:
        """Called when the pipeline sets its timesteps: a new run of `num_steps` steps starts."""
        for name, state in self.manager.states().items():
            if state.step:
                self._finish_run(name, state, strict=False)
        if num_steps != self.num_steps:
            raise ScheduleMismatchError(self._mismatch(num_steps))

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        unfinished = [(n, s.step) for n, s in self.manager.states().items() if s.step]
        for name, state in self.manager.states().items():
            if state.step:
                self.last_runs[name] = state.stats
        self.manager.reset()
        if unfinished:
            # The pipeline finished its call before the schedule's last step: it ran fewer steps than T.
            raise ScheduleMismatchError(self._mismatch(unfinished[0][1]))
        return module


class DPCacheBlockHook(ModelHook):
    """On every block: at a predicted step the block is skipped; the last block returns the prediction."""

    def __init__(self, manager: ContextStateManager, is_last: bool) -> None:
        super().__init__()
        self.manager = manager
        self.is_last = is_last
        self._tuple_len: int | None = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._io = BlockIO(module)
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: DPCacheState = self.manager.get_state()
        io = self._io
        if state.compute:
            output = self.fn_ref.original_forward(*args, **kwargs)
            self._tuple_len = len(output) if isinstance(output, tuple) else None
            if self.is_last:
                hidden = output[io.hidden_index] if self._tuple_len else output
                state.predictor.update(state.step, hidden)
            return output
        hidden = io.hidden(args, kwargs)
        if self.is_last:
            hidden = state.predictor.predict(state.step)
        if self._tuple_len is None:
            return hidden
        out = [None] * self._tuple_len
        out[io.hidden_index] = hidden
        if io.encoder_index is not None:
            out[io.encoder_index] = io.encoder(args, kwargs)
        return tuple(out)


def apply_dpcache(module: torch.nn.Module | object, config: DPCacheConfig) -> tuple[int, ...]:
    """Apply DPCache to a diffusion transformer, or to a pipeline's transformer.

    Given a pipeline, the scheduler's `set_timesteps` is also watched, so a call with another step count
    than `config.num_inference_steps` fails before any step runs. Given only the transformer, runs are
    detected from the timestep and a mismatch is reported when the pipeline's call ends.

    Returns the key steps in use.

    Example:
        ```python
        >>> from diffusers import FluxPipeline
        >>> from dpcache import DPCacheConfig, apply_dpcache

        >>> pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16)
        >>> apply_dpcache(pipe, DPCacheConfig(cost="flux_dev_T50.safetensors", budget=13))
        >>> image = pipe("a red apple", num_inference_steps=50).images[0]
        ```
    """
    transformer = transformer_of(module)
    key_steps, prototype = resolve(config)
    layout = block_layout(transformer)

    def block_hooks(_, manager: ContextStateManager, __) -> None:
        for idx, block in enumerate(layout.blocks):
            register_hook(block, DPCacheBlockHook(manager, idx == len(layout.blocks) - 1), _BLOCK_HOOK)

    _, step_hook = apply_cache_hooks(
        transformer,
        _STEP_HOOK,
        lambda: DPCacheState(prototype.clone()),
        lambda manager: DPCacheStepHook(manager, key_steps, config.num_inference_steps),
        block_hooks,
        already="DPCache is already applied to this transformer; call remove_dpcache first",
        error=DPCacheError,
    )
    if module is not transformer:
        watch_run_start(module.scheduler, step_hook.begin_run, _RUN_WATCH)
    return key_steps


def remove_dpcache(module: torch.nn.Module | object) -> None:
    """Remove DPCache from a transformer (or a pipeline's transformer); the model runs uncached again."""
    transformer = transformer_of(module)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(_STEP_HOOK, recurse=False)
    for block in block_layout(transformer).blocks:
        HookRegistry.check_if_exists_or_initialize(block).remove_hook(_BLOCK_HOOK, recurse=False)
    refresh_hook_tree(transformer)
    unwatch_run_start(getattr(module, "scheduler", None), _RUN_WATCH)


def dpcache_stats(module: torch.nn.Module | object) -> dict[str, RunStats]:
    """Per cache context, what the last finished run did (key steps computed, steps predicted)."""
    hook = HookRegistry.check_if_exists_or_initialize(transformer_of(module)).get_hook(_STEP_HOOK)
    if hook is None:
        raise DPCacheError("DPCache is not applied to this module")
    return dict(hook.last_runs)
