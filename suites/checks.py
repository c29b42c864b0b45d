"""The tests every suite runs, written once: each `suites/<name>/test_<name>.py` imports them, and they
use that directory's `suite_session` fixture (one model per suite and `--scale`)."""

from __future__ import annotations

from typing import Any

import pytest

from suites.common import (
    QUALITY_METRICS,
    SPEED_METRICS,
    committed,
    gate_record,
    load_schedules,
    result,
    update_schedule,
)


# ---------------------------------------------------------------- calibration and schedules
@pytest.mark.calibration
def test_cost_tensor(suite_session):
    from dpcache.calibration import prompt_hash

    ct, ctx = suite_session.cost_tensor(), suite_session.ctx
    t = ctx.num_steps
    first, last = suite_session.method("dpcache").settings(ctx)
    assert ct.cost.shape == (t, t + 1, t + 1)
    meta = ct.meta
    assert meta.num_steps == t
    assert meta.model_id == ctx.spec.name
    assert (meta.predictor, meta.predictor_order) == ("taylor", 2)
    assert (meta.first_full_steps, meta.last_full_steps) == (first, last)
    assert list(meta.prompt_hashes) == [prompt_hash(p) for p in ctx.calibration_prompts]
    assert list(meta.seeds) == [42 + i for i in range(len(ctx.calibration_prompts))]
    assert not set(map(str, ctx.calibration_prompts)) & set(map(str, ctx.evaluation_prompts))


@pytest.mark.schedule
def test_schedule(suite_session, budget, pytestconfig, request):
    from dpcache.errors import DPCacheError
    from harness.plugin import report_ungated

    ctx, suite = suite_session.ctx, suite_session.suite_def
    model, t, weights = ctx.spec.name, f"T{ctx.num_steps}", ctx.weights_id[:16]
    entry = load_schedules(suite).get(model, {}).get(t)
    try:
        steps = suite_session.method("dpcache").schedule(ctx, budget)
    except DPCacheError as e:
        where = committed(suite_session, "dpcache", budget)
        if where or (entry and str(budget) in entry["schedules"]):
            pytest.fail(
                f"{model} {t} K={budget} has a committed schedule/expectation but is now unplannable: {e}"
            )
        pytest.skip(str(e))
    if pytestconfig.getoption("--update-expected"):
        update_schedule(suite, model, t, weights, budget, steps)
        return
    if entry is None or str(budget) not in entry["schedules"]:
        what = f"{model} {t}" if entry is None else f"{model} {t} K={budget}"
        report_ungated(
            request,
            f"{model}-dpcache-K{budget}-schedule",
            f"no schedule baseline for {what} in {suite.schedules_file} (bootstrap it with --update-expected)",
            scale=ctx.spec.scale,
        )
        return
    want = entry["schedules"][str(budget)]
    assert steps == want, (
        f"{model} {t} K={budget}: planned key steps {steps} differ from the snapshot {want} "
        f"(snapshot weights {entry['weights']}, now {weights})"
    )


# ---------------------------------------------------------------- speed, quality, references
@pytest.mark.speedup
def test_speedup(suite_session, gate, tracker, method, budget):
    from harness.runner import cache_check

    record = result(suite_session, method, budget, tracker)
    problem = cache_check(record)
    gate_record(suite_session, gate, record, SPEED_METRICS)
    assert problem is None, problem


@pytest.mark.quality
def test_quality(suite_session, gate, tracker, method, budget):
    record = result(suite_session, method, budget, tracker)
    gate_record(suite_session, gate, record, QUALITY_METRICS)


@pytest.mark.quality
def test_reference(suite_session, prompt_index):
    from harness.references import ReferenceDriftError

    key = suite_session.reference_keys()[prompt_index]
    store = suite_session.committed_store
    if key not in store:
        suite_session.references()  # with --update-references this writes the committed reference
    fresh = suite_session.fresh_full(prompt_index)
    try:
        psnr = store.check_drift(key, fresh)
    except ReferenceDriftError as e:
        pytest.fail(str(e), pytrace=False)
    assert psnr >= 40.0


# ---------------------------------------------------------------- what users hit in practice
def batch_call(
    ctx: Any, prompts: list[Any], seeds: list[int], steps: int | None = None, image_of: Any = None
) -> Any:
    """One pipeline call with several prompts, one generator per sample (so a batch draws the same noise
    as its samples run alone); output as `ModelContext.call`. An image-to-video pipeline conditions the whole
    batch on one image (diffusers' `WanImageToVideoPipeline` takes one): that of `image_of` (default: the
    first prompt)."""
    import torch

    kw = ctx.kwargs(prompts[0] if image_of is None else image_of, steps)
    if "class_labels" in kw:
        kw["class_labels"] = [int(ctx.spec.pipeline_kwargs(p)["class_labels"][0]) for p in prompts]
    else:
        kw["prompt"] = list(prompts)
        if "negative_prompt" in kw:
            kw["negative_prompt"] = [kw["negative_prompt"]] * len(prompts)
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    from harness.context import output_tensor

    out = ctx.pipe(num_inference_steps=steps or ctx.num_steps, generator=gens, output_type="pt", **kw)
    return output_tensor(out)


def _dpcache(session: Any, budget: int) -> Any:
    """The suite model's DPCache configuration at `budget` (its schedule planned from the suite's tensor)."""
    return session.method("dpcache").configure(session.ctx, budget)


@pytest.mark.runtime
def test_other_step_count_is_refused(suite_session):
    """A schedule planned for T never runs silently at another step count: the call raises before a step."""
    from dpcache.errors import ScheduleMismatchError

    ctx = suite_session.ctx
    cfg = _dpcache(suite_session, suite_session.suite_def.mismatch_budget)
    other = max(ctx.num_steps - 7, 2)
    cfg.apply()
    try:
        with pytest.raises(ScheduleMismatchError, match=f"planned for T={ctx.num_steps}"):
            ctx.call(ctx.evaluation_prompts[0], 0, other)
    finally:
        cfg.remove()


@pytest.mark.runtime
def test_other_step_count_recalibrates(suite_session):
    """Running the suite at another T (`--steps`) calibrates a cost tensor for that T instead of reusing
    the T-step one; its schedules are planned for that T."""
    import dataclasses

    ctx = suite_session.ctx
    method = suite_session.method("dpcache")
    other_t = 12 if ctx.num_steps != 12 else 10
    other = dataclasses.replace(
        ctx,
        num_steps=other_t,
        calibration_prompts=ctx.calibration_prompts[:1],
        progress=False,
        _full_flops=None,
    )
    assert method.cost_path(other) != method.cost_path(ctx)
    ct = method.cost_tensor(other)
    assert ct.meta.num_steps == other_t and ct.cost.shape[0] == other_t
    # the planner on the new tensor (compute matching aside); 7 of 12 is reachable with the released Wan
    # settings (first 4, last 1 full steps; 6 is not: the planner's jumps are at most 3 steps at T = 12)
    steps = method.plan_steps(other, 7)
    assert len(steps) == 7 and steps[-1] < other_t


@pytest.mark.runtime
def test_batch_of_two_matches_single_samples(suite_session):
    """DPCache at the suite budget: a batch of two prompts gives each sample exactly as it runs alone."""
    ctx = suite_session.ctx
    prompts, seeds = list(ctx.evaluation_prompts[:2]), [7, 8]
    cfg = _dpcache(suite_session, suite_session.suite_def.mismatch_budget)
    cfg.apply()
    try:
        both = batch_call(ctx, prompts, seeds)
        if "image" in ctx.kwargs(prompts[0]):
            # I2V: the batch shares the first prompt's image, and so do the single runs
            alone = [batch_call(ctx, [p], [s], image_of=prompts[0]) for p, s in zip(prompts, seeds)]
        else:
            alone = [ctx.call(p, s) for p, s in zip(prompts, seeds)]
        hits = cfg.cache_hits()
    finally:
        cfg.remove()
    assert hits and hits > 0, "the cache never engaged"
    # Pixels in [0, 1]. Float reassociation across batch shapes already moves the *uncached* dit-tiny by up
    # to 9e-6 at CFG 8, and the Taylor extrapolation amplifies it (measured 2.4e-5); a state shared across
    # the batch moves pixels by ~1e-2 and more (the two samples differ by far more than the bound).
    tol = 1e-4
    assert (alone[0][0] - alone[1][0]).abs().max().item() > 100 * tol
    for i in range(2):
        err = (both[i] - alone[i][0]).abs().max().item()
        assert err <= tol, f"sample {i} of the batch differs from its single run by {err:.2e}"


class FirstBlockCounter:
    """Counts the first transformer block's real computations and the batch size each one saw."""

    def __init__(self, transformer: Any) -> None:
        from dpcache.adapters import block_layout

        block = block_layout(transformer).blocks[0]
        self.batches: list[int] = []
        self.handle = next(iter(block.children())).register_forward_hook(self._hit)

    def _hit(self, module: Any, args: tuple, out: Any) -> None:
        x = args[0] if args else out
        self.batches.append(int(x.shape[0]))

    def close(self) -> None:
        self.handle.remove()


@pytest.mark.runtime
def test_cfg_branches(suite_session):
    """Guidance branches under DPCache: separate pipelines calls (`cond`/`uncond`, e.g. Wan) keep separate
    states, each computing exactly its K key steps; batched CFG (DiT) computes both halves in one K-step
    state. Either way the first block runs K times per branch and nowhere else."""
    from dpcache import dpcache_stats

    ctx = suite_session.ctx
    budget = suite_session.suite_def.mismatch_budget
    cfg = _dpcache(suite_session, budget)
    k = len(cfg.schedule)  # the key steps whose measured compute matches the budget (≤ budget)
    assert k <= budget, (k, budget)
    counter = FirstBlockCounter(ctx.pipe.transformer)
    cfg.apply()
    try:
        ctx.call(ctx.evaluation_prompts[0], 3)
        stats = dpcache_stats(ctx.pipe)
    finally:
        cfg.remove()
        counter.close()
    if ctx.family == "dit":
        assert len(stats) == 1, f"batched CFG must use one state, got {sorted(stats)}"
        assert counter.batches == [2] * k, counter.batches  # cond and uncond halves together
    else:
        assert set(stats) == {"cond", "uncond"}, sorted(stats)
        assert len(counter.batches) == 2 * k, counter.batches
    for name, run in stats.items():
        assert run.computed_steps == cfg.schedule, (name, run.computed_steps, cfg.schedule)
        assert run.cache_hits == ctx.num_steps - k
