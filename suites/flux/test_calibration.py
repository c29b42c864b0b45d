"""FLUX suite: the cost tensor is built with the right metadata, and the planned schedules match the snapshot."""

from __future__ import annotations

import json
import os
import re
import tempfile

import pytest

from suites.flux.conftest import SCHEDULES, load_schedules


@pytest.mark.calibration
def test_cost_tensor(flux_session):
    from dpcache.calibration import prompt_hash

    ct, ctx = flux_session.cost_tensor(), flux_session.ctx
    t = ctx.num_steps
    assert ct.cost.shape == (t, t + 1, t + 1)
    meta = ct.meta
    assert meta.num_steps == t
    assert meta.model_id == ctx.spec.name
    assert (meta.predictor, meta.predictor_order) == ("taylor", 2)
    assert meta.first_full_steps == 3
    assert list(meta.prompt_hashes) == [prompt_hash(p) for p in ctx.calibration_prompts]
    assert list(meta.seeds) == [42 + i for i in range(len(ctx.calibration_prompts))]
    assert not set(ctx.calibration_prompts) & set(ctx.evaluation_prompts)


@pytest.mark.schedule
def test_schedule(flux_session, budget, pytestconfig):
    from filelock import FileLock

    from dpcache.errors import DPCacheError

    ctx = flux_session.ctx
    try:
        steps = flux_session.method("dpcache").schedule(ctx, budget)
    except DPCacheError as e:
        pytest.skip(f"dpcache cannot plan K={budget} at T={ctx.num_steps}: {e}")
    model, t = ctx.spec.name, f"T{ctx.num_steps}"
    if pytestconfig.getoption("--update-expected"):
        with FileLock(os.path.join(tempfile.gettempdir(), "dpcache-flux-schedules.lock")):
            data = load_schedules()
            entry = data.setdefault(model, {}).setdefault(t, {"weights": ctx.weights_id[:16], "schedules": {}})
            entry["weights"] = ctx.weights_id[:16]
            entry["schedules"][str(budget)] = steps
            tmp = SCHEDULES.with_suffix(f".{os.getpid()}.tmp")
            text = json.dumps(data, indent=2, sort_keys=True)
            tmp.write_text(re.sub(r"\[[\d,\s]+\]", lambda m: json.dumps(json.loads(m[0])), text) + "\n")
            os.replace(tmp, SCHEDULES)
        return
    entry = load_schedules().get(model, {}).get(t)
    if entry is None or str(budget) not in entry["schedules"]:
        pytest.fail(f"no schedule snapshot for {model} {t} K={budget} in {SCHEDULES}; run with --update-expected")
    want = entry["schedules"][str(budget)]
    assert steps == want, (
        f"{model} {t} K={budget}: planned key steps {steps} differ from the snapshot {want} "
        f"(snapshot weights {entry['weights']}, now {ctx.weights_id[:16]})"
    )
