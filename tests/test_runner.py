"""A tiny end-to-end benchmark on the random-weight flux-tiny builder (T = 10): records complete, JSON lines
written, references stored and reused, an unreachable MLflow server loses nothing."""

from __future__ import annotations

import json

import pytest

T, BUDGET = 10, 5
FIELDS = (
    "suite",
    "model",
    "scale",
    "method",
    "budget",
    "num_steps",
    "config_tag",
    "schedule",
    "full_steps",
    "flops_speedup",
    "wall_speedup",
    "psnr",
    "ssim",
    "lpips",
    "adherence",
    "reference_key",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    from harness.runner import run_benchmark
    from harness.zoo.flux_tiny import build_pipeline

    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("bench")
    skipped = []
    try:
        with pytest.warns(UserWarning, match="unreachable"):
            records = run_benchmark(
                "flux-tiny",
                ["full", "fewer-steps", "dpcache", "dpcache-o1"],
                [BUDGET, 2],
                T,
                1,
                repeats=1,
                num_calibration=1,
                json_out=d / "results.jsonl",
                mlflow_uri="http://127.0.0.1:9",
                cache_dir=d / "cache",
                artifacts_dir=d / "art",
                pipe=build_pipeline(trained=False),
                skipped=skipped,
                progress=False,
            )
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    return d, records, skipped


def test_records_complete(run):
    _, records, _ = run
    assert [r.config_tag for r in records] == [
        "full-K10",
        "fewer-steps-K5",
        "fewer-steps-K2",
        "dpcache-K5-M3-O2",
        "dpcache-o1-K5-M3-O1",
    ]
    for r in records:
        d = r.to_dict()
        for f in FIELDS:
            assert f in d, f
        assert r.flops and r.flops_speedup > 0 and r.wall_speedup > 0
        assert r.timing["repeats"] == 1 and len(r.timing["method"]) == 1
        assert r.timing["transformer_s"] > 0 and r.timing["pipeline_s"] >= r.timing["transformer_s"]
        assert len(r.reference_key) == 1 and r.psnr is not None and r.ssim is not None
        assert "lpips" in r.unavailable() or r.lpips is not None
    full, few5, few2, dp, dp1 = records
    assert full.psnr == 100.0 and full.flops_speedup == 1.0
    assert few5.flops_speedup == pytest.approx(2.0) and few2.flops_speedup == pytest.approx(5.0)
    assert len(dp.schedule) == BUDGET and dp.schedule[:3] == [0, 1, 2]
    assert sum(dp.cache_hits) == 2 * (T - BUDGET)  # both CFG branches predict every non-key step
    assert 1.8 < dp.flops_speedup <= 2.0 and dp.extra_metrics["measured_k"] == pytest.approx(
        T / dp.flops_speedup
    )
    # the order-1 variant: its own name, knob and cost tensor, planned and matched like `dpcache`
    assert dp1.method == "dpcache-o1" and dp1.knobs["O"] == 1 and len(dp1.schedule) == BUDGET
    assert sum(dp1.cache_hits) == 2 * (T - BUDGET)


def test_unreachable_budget_reported(run):
    _, _, skipped = run
    assert [(s.method, s.budget) for s in skipped] == [("dpcache", 2), ("dpcache-o1", 2)]
    assert "cannot plan K=2" in skipped[0].reason and "mandatory" in skipped[0].reason


def test_json_lines_written_despite_unreachable_mlflow(run):
    d, records, _ = run
    lines = [json.loads(x) for x in (d / "results.jsonl").read_text().splitlines()]
    assert [x["config_tag"] for x in lines] == [r.config_tag for r in records]
    assert len({x["invocation"] for x in lines}) == 1
    assert (d / "art" / "flux-tiny" / "dpcache-K5-M3-O2" / "prompt00.png").is_file()
    assert (d / "art" / "flux-tiny" / "cost_tensor.png").is_file()


def test_references_and_calibration_cached(run):
    d, records, _ = run
    refs = list((d / "cache" / "references" / "flux-tiny").glob("*.safetensors"))
    assert [p.stem for p in refs] == records[0].reference_key
    tensors = sorted(p.name for p in (d / "cache" / "dpcache").glob("*.safetensors"))
    assert len(tensors) == 2 and "-o1-" in tensors[0] and "-o2-" in tensors[1]
    assert not list(d.rglob("*.tmp"))


def test_cache_check_flags_a_cache_that_never_hit():
    from harness.records import ResultRecord
    from harness.runner import cache_check

    def rec(method, budget, hits):
        return ResultRecord(
            suite="s", model="m", scale="tiny", method=method, budget=budget, num_steps=50, cache_hits=hits
        )

    assert "never engaged" in cache_check(rec("dpcache", 13, [0, 0]))
    assert cache_check(rec("dpcache", 13, [3, 0])) is None
    assert cache_check(rec("dpcache", 50, [0])) is None  # K = T: nothing to skip
    assert cache_check(rec("fewer-steps", 13, None)) is None


def test_cache_check_flags_a_fixed_schedule_off_its_budget():
    """DPCache's compute does not depend on the prompt, so a measured K off the budget is a mismatch."""
    from harness.records import ResultRecord
    from harness.runner import cache_check

    def rec(speedup, knobs):
        return ResultRecord(
            suite="s",
            model="m",
            scale="tiny",
            method="dpcache",
            budget=13,
            num_steps=50,
            cache_hits=[37],
            flops_speedup=speedup,
            knobs=knobs,
        )

    assert "not at matched compute" in cache_check(rec(50 / 14.0, {"key_steps": 13}))  # 7.7% over
    assert cache_check(rec(50 / 13.3, {"key_steps": 13})) is None  # 2.3%: within 5%
    assert cache_check(rec(50 / 13.6, {"key_steps": 11})) is None
    assert cache_check(rec(50 / 14.0, {})) is None  # adaptive methods: compute varies with the prompt


def test_repeats_zero_records_wall_clock_unavailable_and_nothing_else(tmp_path):
    """`repeats=0` (the suites' `--repeats 0`) times nothing: wall_speedup is unavailable with the reason;
    FLOPs speedup, quality and peak memory are measured as with timing on; negative repeats are refused."""
    import torch

    from harness.metrics import Unavailable
    from harness.runner import NOT_TIMED, BenchSession
    from harness.zoo.flux_tiny import build_pipeline
    from harness.zoo.registry import get_spec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = build_pipeline(trained=False)
        kw = dict(steps=T, num_prompts=1, num_calibration=1, cache_dir=tmp_path, progress=False)
        with pytest.raises(ValueError, match="repeats must be >= 0"):
            BenchSession(get_spec("flux-tiny"), pipe, repeats=-1, **kw)
        untimed = BenchSession(get_spec("flux-tiny"), pipe, repeats=0, **kw).record("fewer-steps", BUDGET)
        timed = BenchSession(get_spec("flux-tiny"), pipe, repeats=1, **kw).record("fewer-steps", BUDGET)
    finally:
        torch.set_num_threads(threads)
    assert isinstance(untimed.wall_speedup, Unavailable) and untimed.wall_speedup.reason == NOT_TIMED
    assert "wall_speedup" in untimed.unavailable() and "transformer_wall_speedup" not in untimed.extra_metrics
    assert untimed.timing["repeats"] == 0 and "method" not in untimed.timing
    assert timed.wall_speedup > 0 and len(timed.timing["method"]) == 1
    assert untimed.flops_speedup == timed.flops_speedup == pytest.approx(T / BUDGET)
    assert untimed.psnr == timed.psnr and untimed.peak_mem is not None
