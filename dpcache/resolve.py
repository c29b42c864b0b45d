"""What `apply_dpcache` runs for a `DPCacheConfig`: its key steps (schedule file, explicit or planned) and predictor."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import DPCacheError
from .predictors import Predictor, TaylorPredictor

if TYPE_CHECKING:
    from .hooks import DPCacheConfig
    from .schedule_file import ScheduleFile


def load_schedule_file(config: DPCacheConfig) -> ScheduleFile:
    """The config's schedule file, checked against its T, predictor and model id (refused naming the field)."""
    from .schedule_file import ScheduleFile

    if config.schedule is not None or config.cost is not None:
        raise DPCacheError("give either `schedule_file` or `schedule` / `cost`, not both")
    tuned = ScheduleFile.load(config.schedule_file)
    pred = config.predictor
    tuned.check_compatible(
        num_steps=config.num_inference_steps,
        predictor=pred.name if pred is not None else None,
        predictor_order=pred.order if pred is not None else config.order,
        model_id=config.model_id,
        source=f"schedule file {config.schedule_file}",
    )
    return tuned


def _predictor(config: DPCacheConfig, tuned: ScheduleFile | None, segments: dict[int, int]) -> Predictor:
    first = tuned.first_full_steps if tuned else config.first_full_steps
    order = tuned.predictor_order if tuned else (2 if config.order is None else config.order)
    if config.predictor is not None:
        return config.predictor.clone(segment_orders=segments) if segments else config.predictor.clone()
    try:
        return TaylorPredictor(order=order, derivative_start=max(first - 1, 0), segment_orders=segments)
    except ValueError as exc:
        raise DPCacheError(str(exc)) from None


def _key_steps(config: DPCacheConfig, tuned: ScheduleFile | None) -> tuple[int, ...]:
    T = config.num_inference_steps
    if tuned is not None:
        return tuple(tuned.key_steps)
    if config.schedule is not None:
        steps = tuple(getattr(config.schedule, "key_steps", config.schedule))
        if list(steps) != sorted(set(steps)):
            raise DPCacheError(f"schedule must be strictly increasing step indices, got {list(steps)}")
        if not steps or steps[0] != 0 or steps[-1] >= T:
            raise DPCacheError(f"schedule must start at step 0 and stay below T={T}, got {list(steps)}")
        return steps
    if config.cost is None or config.budget is None:
        raise DPCacheError("DPCacheConfig needs either `schedule` or both `cost` and `budget`")
    from .cost_tensor import CostTensor
    from .planner import plan

    cost = config.cost
    if isinstance(cost, (str, os.PathLike)):
        cost = CostTensor.load(cost)
    if isinstance(cost, CostTensor):
        pred = _predictor(config, None, {})
        cost.check_compatible(num_steps=T, predictor=pred.name, predictor_order=pred.order)
    schedule = plan(
        cost,
        config.budget,
        first_full_steps=config.first_full_steps,
        last_full_steps=config.last_full_steps,
        max_jump=config.max_jump,
        solver=config.solver,
    )
    return tuple(schedule.key_steps)


def resolve_schedule(config: DPCacheConfig) -> tuple[int, ...]:
    """The sorted key steps: the schedule file's, the explicit schedule, or the plan of `cost` at `budget`."""
    return _key_steps(config, load_schedule_file(config) if config.schedule_file is not None else None)


def resolve(config: DPCacheConfig) -> tuple[tuple[int, ...], Predictor]:
    """The key steps and the predictor each cache context clones (the released warm-up gate by default;
    the schedule file's or `segment_orders`' order per segment)."""
    tuned = load_schedule_file(config) if config.schedule_file is not None else None
    steps = _key_steps(config, tuned)
    if tuned is not None:
        segments = tuned.orders_by_step
    elif config.segment_orders is not None:
        if len(config.segment_orders) != len(steps):
            raise DPCacheError(
                f"segment_orders needs one order per key step ({len(steps)}), got {len(config.segment_orders)}"
            )
        segments = dict(zip(steps, config.segment_orders))
    else:
        segments = {}
    return steps, _predictor(config, tuned, segments)
