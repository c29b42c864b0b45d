"""`dpcache tune` and its schedule file on the trained flux-tiny pipeline (few steps, two calibration prompts)."""

from __future__ import annotations

import json

import pytest
import torch

from dpcache import DPCacheConfig, TaylorPredictor, apply_dpcache, calibrate, dpcache_stats, remove_dpcache
from dpcache.calibration import prompt_hash
from dpcache.predictors import Predictor
from dpcache.schedule_file import ScheduleFile, ScheduleFileError, ScheduleFileMismatchError
from dpcache.tune import TuneSpace, tune

T, K = 10, 5
SPACE = TuneSpace(
    solvers=("official", "exact"),
    orders=(2, 0),
    first_full_steps=(3,),
    last_full_steps=(0, 1),
    max_extrapolation=(None, 2),
    aligned=True,
    refine_radius=1,
)


def test_segment_orders_predict_like_the_uniform_predictors():
    """Truncating the order-2 factors per segment gives exactly the order-0/1/2 predictor's prediction."""
    gen = torch.Generator().manual_seed(0)
    feats = {s: torch.randn(3, 4, generator=gen) for s in (0, 1, 2, 5, 9)}
    mixed = TaylorPredictor(order=2, segment_orders={2: 0, 5: 1})
    uniform = {o: TaylorPredictor(order=o) for o in (0, 1, 2)}
    for s, f in feats.items():
        for p in (mixed, *uniform.values()):
            p.update(s, f)
        want = {0: 2, 1: 2, 2: 0, 5: 1, 9: 2}[s]
        assert torch.equal(mixed.predict(s + 2), uniform[want].predict(s + 2))
    assert not torch.equal(uniform[0].predict(11), uniform[2].predict(11))
    with pytest.raises(ValueError, match="segment orders"):
        TaylorPredictor(order=1, segment_orders={3: 2})


@pytest.fixture(scope="module")
def flux():
    from harness.zoo.registry import availability, get_spec, load_pipeline

    spec = get_spec("flux-tiny")
    ok, why = availability(spec)
    if not ok:
        pytest.skip(why)
    torch.set_num_threads(1)
    pipe = load_pipeline(spec)
    prompts = list(spec.calibration_prompts[:2])
    seen: list = []

    def kwargs(p):
        seen.append(p)
        return {k: v for k, v in spec.pipeline_kwargs(p, T).items() if k != "num_inference_steps"}

    ct = calibrate(
        pipe, prompts, num_inference_steps=T, model_id=spec.name, prompt_to_kwargs=kwargs, progress=False
    )
    return spec, pipe, prompts, kwargs, ct, seen


@pytest.fixture(scope="module")
def tuned(flux, tmp_path_factory):
    _spec, pipe, prompts, kwargs, ct, _seen = flux
    out = tmp_path_factory.mktemp("tune") / "tuned.json"
    cache = out.parent / "cache"
    result = tune(pipe, ct, K, prompts, num_inference_steps=T, prompt_to_kwargs=kwargs, space=SPACE,
                  cache_dir=cache, out=out, progress=False)  # fmt: skip
    return result, out, cache


def _sample(pipe, spec, prompt, seed=42):
    kw = spec.pipeline_kwargs(prompt, T)
    return pipe(**kw, generator=torch.Generator("cpu").manual_seed(seed), output_type="pt").images


def test_tuning_reads_only_calibration_prompts(flux, tuned):
    spec, _, prompts, _, _, seen = flux
    sf = tuned[0].schedule
    evaluation = {prompt_hash(str(p)) for p in spec.evaluation_prompts}
    assert sf.prompt_hashes == [prompt_hash(p) for p in prompts]
    assert not set(sf.prompt_hashes) & evaluation
    assert set(seen) <= set(prompts)  # every prompt the pipeline was called with
    assert sf.seeds == [42, 43]


def test_budget_is_exactly_k(flux, tuned):
    spec, pipe, prompts, _, _, _ = flux
    result, out, _ = tuned
    sf = result.schedule
    assert len(sf.key_steps) == sf.budget == K
    scored = [c for c in sf.candidates if c["psnr"] is not None]
    assert len(scored) >= 6 and all(len(c["key_steps"]) == K for c in scored)
    assert {c["stage"] for c in scored} >= {"released", "solver+order", "aligned", "refine"}
    assert sf.calibration_score >= sf.released_score  # the search keeps the best it scored
    apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, schedule_file=out, model_id=spec.name))
    try:
        _sample(pipe, spec, prompts[0])
        runs = dpcache_stats(pipe)
    finally:
        remove_dpcache(pipe)
    assert runs and all(run.computed_steps == sf.key_steps for run in runs.values())
    assert sf.samples == 2 * (1 + len({c["identity"] for c in scored}))  # references + one run per candidate


def test_schedule_file_round_trips_and_is_refused_elsewhere(flux, tuned, tmp_path):
    spec = flux[0]
    result, out, _ = tuned
    loaded = ScheduleFile.load(out)
    assert loaded.to_dict() == result.schedule.to_dict()
    assert loaded.model_id == "flux-tiny" and loaded.num_steps == T and len(loaded.weights_hash) == 64
    DPCacheConfig(num_inference_steps=T, schedule_file=out, model_id=spec.name)  # accepted
    with pytest.raises(ScheduleFileMismatchError, match="model_id: expected 'dit-tiny'"):
        DPCacheConfig(num_inference_steps=T, schedule_file=out, model_id="dit-tiny")
    with pytest.raises(ScheduleFileMismatchError, match=f"num_steps: expected {T + 2}"):
        DPCacheConfig(num_inference_steps=T + 2, schedule_file=out)
    other = 1 if loaded.predictor_order != 1 else 0
    with pytest.raises(ScheduleFileMismatchError, match="predictor_order"):
        DPCacheConfig(num_inference_steps=T, schedule_file=out, predictor=TaylorPredictor(order=other))

    class Other(TaylorPredictor):
        name = "other"

    pred: Predictor = Other(order=loaded.predictor_order)
    with pytest.raises(ScheduleFileMismatchError, match="predictor: expected 'other'"):
        DPCacheConfig(num_inference_steps=T, schedule_file=out, predictor=pred)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**loaded.to_dict(), "key_steps": loaded.key_steps[:-1]}))
    with pytest.raises(ScheduleFileError, match="budget"):
        ScheduleFile.load(broken)


def test_cli_generate_refuses_a_schedule_file_of_another_model(tuned, capsys):
    from dpcache.cli import main
    from harness.zoo.registry import get_spec

    out = tuned[1]
    code = main(["generate", "--pipeline", get_spec("dit-tiny").path, "--schedule-file", str(out),
                 "--steps", str(T), "--prompt", "3"])  # fmt: skip
    assert code == 2 and "model_id" in capsys.readouterr().err
    code = main(["generate", "--pipeline", get_spec("flux-tiny").path, "--schedule-file", str(out),
                 "--steps", str(T + 1), "--prompt", "a red 1", "--any-model"])  # fmt: skip
    assert code == 2 and "num_steps" in capsys.readouterr().err


def test_tune_is_deterministic_and_cached(flux, tuned, tmp_path):
    _spec, pipe, prompts, kwargs, ct, _ = flux
    result, out, cache = tuned
    again = tune(pipe, ct, K, prompts, num_inference_steps=T, prompt_to_kwargs=kwargs, space=SPACE,
                 cache_dir=cache, out=tmp_path / "cached.json", progress=False)  # fmt: skip
    assert again.samples_run == 0 and again.schedule.samples == result.schedule.samples
    assert (tmp_path / "cached.json").read_bytes() == out.read_bytes()
    fresh = tune(pipe, ct, K, prompts, num_inference_steps=T, prompt_to_kwargs=kwargs, space=SPACE,
                 out=tmp_path / "fresh.json", progress=False)  # fmt: skip
    assert fresh.samples_run == result.schedule.samples
    assert (tmp_path / "fresh.json").read_bytes() == out.read_bytes()


def test_sample_cap_stops_the_search_with_a_valid_file(flux, tuned, tmp_path):
    _spec, pipe, prompts, kwargs, ct, _ = flux
    capped = TuneSpace(**{**SPACE.__dict__, "max_samples": 8})
    r = tune(pipe, ct, K, prompts, num_inference_steps=T, prompt_to_kwargs=kwargs, space=capped,
             cache_dir=tuned[2], out=tmp_path / "capped.json", progress=False)  # fmt: skip
    assert r.stopped and r.schedule.samples <= 8 and len(r.schedule.key_steps) == K
    assert ScheduleFile.load(tmp_path / "capped.json").samples == r.schedule.samples


def test_full_budget_with_segment_orders_equals_uncached(flux, tmp_path):
    """K = T: every step computed, whatever the per-segment orders, so the output is the uncached one."""
    spec, pipe, prompts, _, _, _ = flux
    ref = _sample(pipe, spec, prompts[0])
    orders = [i % 3 for i in range(T)]
    apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, schedule=list(range(T)), segment_orders=orders))
    try:
        assert torch.equal(_sample(pipe, spec, prompts[0]), ref)
    finally:
        remove_dpcache(pipe)
    sf = ScheduleFile("flux-tiny", "w", T, T, list(range(T)), orders, predictor_order=2)
    sf.save(tmp_path / "full.json")
    apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, schedule_file=tmp_path / "full.json"))
    try:
        assert torch.equal(_sample(pipe, spec, prompts[0]), ref)
        assert all(not run.predicted_steps for run in dpcache_stats(pipe).values())
    finally:
        remove_dpcache(pipe)
    # and a K < T schedule with mixed orders really predicts (the test above is not vacuous)
    apply_dpcache(
        pipe, DPCacheConfig(num_inference_steps=T, schedule=[0, 1, 2, 5, 8], segment_orders=[2, 2, 0, 1, 2])
    )
    try:
        assert not torch.equal(_sample(pipe, spec, prompts[0]), ref)
    finally:
        remove_dpcache(pipe)


def test_aligned_key_steps_are_the_nearest_grid_times():
    from dpcache.tune_search import aligned_key_steps

    grid = [1000 - 20 * i for i in range(50)]
    assert aligned_key_steps(grid, [1000, 875, 750, 625, 500, 375, 250, 125, 1]) == (
        0, 6, 12, 19, 25, 31, 37, 44, 49,
    )  # fmt: skip
    # two coarse times nearest the same grid point: the second moves to the next free one, K stays exact
    assert aligned_key_steps(grid, [1000, 990, 985, 600]) == (0, 1, 2, 20)
    with pytest.raises(Exception, match="cannot place"):
        aligned_key_steps([1000, 500], [1000, 10, 5])


def test_aligned_candidate_runs_the_k_step_samplers_times(flux, tuned):
    """BudCache's re-alignment: flux's K-step times (sigmas linspace(1, 1/n, n), one shift for every n) lie
    on the T-step grid, so the aligned key steps are exactly the grid points a K-step sampler evaluates at."""
    from dpcache.tune_search import Search, aligned_key_steps

    _spec, pipe, prompts, kwargs, _, _ = flux
    search = Search(pipe, [kwargs(prompts[0])], [42], T, K, None, None, None, "w", None, False)
    grid, coarse = search.timesteps(T), search.timesteps(K)
    steps = aligned_key_steps(grid, coarse)
    assert steps == (0, 2, 4, 6, 8) and list(grid[list(steps)]) == list(coarse)
    tried = [c for c in tuned[0].schedule.candidates if c["stage"] == "aligned"]
    assert len(tried) == 1 and tried[0]["key_steps"] == list(steps) and tried[0]["segment_orders"] == [0] * K


def test_validation_prompts_choose_the_branch_and_are_recorded(flux, tuned, tmp_path):
    """Both branches (planned, aligned) are polished; other calibration prompts choose between them by their
    own PSNR, recorded in the file; a validation prompt that is also a search prompt is refused."""
    spec, pipe, prompts, kwargs, ct, _seen = flux
    extra = [spec.calibration_prompts[2]]
    r = tune(pipe, ct, K, prompts, num_inference_steps=T, prompt_to_kwargs=kwargs, space=SPACE,
             cache_dir=tuned[2], out=tmp_path / "v.json", progress=False, validation_prompts=extra)  # fmt: skip
    sf = ScheduleFile.load(tmp_path / "v.json")
    scores = sf.settings["validation_psnr"]
    assert set(scores) == {"planned", "aligned"}
    assert sf.settings.get("branch", "planned") == max(scores, key=scores.get)  # the validation's choice
    assert sf.settings["validation_prompt_hashes"] == [prompt_hash(extra[0])]
    assert not set(sf.settings["validation_prompt_hashes"]) & {
        prompt_hash(str(p)) for p in spec.evaluation_prompts
    }
    validated = [c for c in sf.candidates if c["stage"] == "validation"]
    assert len(validated) == 2 and sorted(round(v, 6) for v in scores.values()) == sorted(
        c["psnr"] for c in validated
    )
    assert r.schedule.samples > tuned[0].schedule.samples  # the validation prompt's reference + two samples
    with pytest.raises(Exception, match="also search prompts"):
        tune(pipe, ct, K, prompts, num_inference_steps=T, prompt_to_kwargs=kwargs, space=SPACE,
             progress=False, validation_prompts=[prompts[0]])  # fmt: skip


def test_cli_tune_refuses_bad_validation_prompts(flux, tmp_path, capsys):
    """`dpcache tune --validation-prompts`: a size below 1, or a source with no prompt the search does not already
    use, is refused before the pipeline loads."""
    from dpcache.cli import main

    spec, _, prompts, _, ct, _ = flux
    cost = tmp_path / "cost.safetensors"
    ct.save(cost)
    search = tmp_path / "search.txt"
    search.write_text("\n".join(prompts) + "\n")
    base = ["tune", "--pipeline", spec.path, "--cost", str(cost), "--budget", str(K), "--steps", str(T),
            "--prompts", str(search), "--sample-size", "0", "--aligned", "--out", str(tmp_path / "t.json")]  # fmt: skip
    assert main([*base, "--validation-prompts", str(search), "--validation-size", "0"]) == 2
    assert "--validation-size must be >= 1" in capsys.readouterr().err
    assert main([*base, "--validation-prompts", str(search)]) == 2
    assert "no prompt the search does not already use" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()
