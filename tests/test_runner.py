"""A tiny end-to-end benchmark on the random-weight flux-tiny builder (T = 10): records complete, JSON lines
written, references stored and reused, an unreachable MLflow server loses nothing."""

from __future__ import annotations

import json

import pytest

T, BUDGET = 10, 5
PARTS = ("identity", "speed", "timing", "quality", "schedule", "references", "provenance", "outcome")
V = "-T10-N1"  # T and the prompt count differ from flux-tiny's defaults (50, 8): both in every tag


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
        f"full-K10{V}",
        f"fewer-steps-K5{V}",
        f"fewer-steps-K2{V}",
        f"dpcache-K5-M3-O2{V}",
        f"dpcache-o1-K5-M3-O1{V}",
    ]
    for r in records:
        d = r.to_dict()
        assert set(PARTS) <= set(d) and d["record_version"] == 2
        sp, tm, q = r.speed, r.timing, r.quality
        assert sp.flops and sp.flops_speedup > 0 and sp.wall_speedup > 0
        assert tm.repeats == 1 and len(tm.method_s) == 1
        # two separately timed passes: no order between them is asserted
        assert tm.transformer_s > 0 and tm.pipeline_s > 0
        assert len(r.references.keys) == 1 and q.psnr is not None and q.ssim is not None
        assert "lpips" in r.unavailable() or q.lpips is not None
        assert r.identity.num_steps == T and r.identity.num_prompts == 1 and r.identity.device_class == "cpu"
    full, few5, few2, dp, dp1 = records
    assert full.quality.psnr == 100.0 and full.speed.flops_speedup == 1.0 and full.speed.matched is None
    assert few5.speed.flops_speedup == pytest.approx(2.0) and few2.speed.flops_speedup == pytest.approx(5.0)
    assert few5.speed.measured_k == pytest.approx(5.0) and few5.speed.matched is True
    assert len(dp.schedule.key_steps) == BUDGET and dp.schedule.key_steps[:3] == [0, 1, 2]
    assert sum(dp.speed.cache_hits) == 2 * (T - BUDGET)  # both CFG branches predict every non-key step
    # compute measured where it is scored: on the evaluation prompts, matched to K within 5 %
    assert 1.8 < dp.speed.flops_speedup <= 2.0
    assert dp.speed.measured_k == pytest.approx(T / dp.speed.flops_speedup) and dp.speed.matched is True
    assert "measured_K" not in dp.identity.knobs  # the search's own figure is named for what it is
    # the order-1 variant: its own name, knob and cost tensor, planned and matched like `dpcache`
    assert (
        dp1.method == "dpcache-o1" and dp1.identity.knobs["O"] == 1 and len(dp1.schedule.key_steps) == BUDGET
    )
    assert sum(dp1.speed.cache_hits) == 2 * (T - BUDGET)


def test_unreachable_budget_reported_and_recorded(run):
    d, _, skipped = run
    assert [(s.method, s.budget) for s in skipped] == [("dpcache", 2), ("dpcache-o1", 2)]
    assert "cannot plan K=2" in skipped[0].reason and "mandatory" in skipped[0].reason
    from harness.record_files import read_jsonl

    gone = [r for _, r in read_jsonl(d / "results.jsonl") if not r.ran]
    assert [(r.method, r.identity.budget, r.outcome.status) for r in gone] == [
        ("dpcache", 2, "not_run"),
        ("dpcache-o1", 2, "not_run"),
    ]
    assert "cannot plan K=2" in gone[0].outcome.reason


def test_json_lines_written_despite_unreachable_mlflow(run):
    d, records, _ = run
    lines = [json.loads(x) for x in (d / "results.jsonl").read_text().splitlines()]
    ran = [x for x in lines if x["outcome"]["status"] == "ok"]
    assert [x["identity"]["config_tag"] for x in ran] == [r.config_tag for r in records]
    assert len({x["invocation"] for x in lines}) == 1
    assert (d / "art" / "flux-tiny" / f"dpcache-K5-M3-O2{V}" / "prompt00.png").is_file()
    assert (d / "art" / "flux-tiny" / "cost_tensor.png").is_file()


def test_references_and_calibration_cached(run):
    d, records, _ = run
    refs = list((d / "cache" / "references" / "flux-tiny").glob("*.safetensors"))
    assert [p.stem for p in refs] == records[0].references.keys
    tensors = sorted(p.name for p in (d / "cache" / "dpcache").glob("*.safetensors"))
    # dpcache (order 2) and dpcache-o1 ran; the first calibration built every Taylor order's tensor from the
    # same full-compute runs (order 0 too, for dpcache-tuned / dpcache-o0)
    assert [t.split("-taylor-")[1][:3] for t in tensors] == ["o0-", "o1-", "o2-"]
    assert not list(d.rglob("*.tmp"))


def _rec(method: str, budget: int, hits: list[int], measured_k: float | None = None, knobs=None):
    from harness.records import ResultRecord

    return ResultRecord.create(
        suite="s", model="m", scale="tiny", method=method, budget=budget, num_steps=50, cache_hits=hits,
        measured_k=measured_k, knobs=knobs,
    )  # fmt: skip


def test_cache_check_flags_a_cache_that_never_hit():
    from harness.runner import cache_check

    assert "never engaged" in cache_check(_rec("dpcache", 13, [0, 0]))
    assert cache_check(_rec("dpcache", 13, [3, 0])) is None
    assert cache_check(_rec("dpcache", 50, [0])) is None  # K = T: nothing to skip
    assert cache_check(_rec("fewer-steps", 13, [])) is None


def test_compute_off_k_on_the_evaluation_prompts_is_unmatched():
    """Old: an adaptive method was matched on the calibration prompts only; TeaCache's "K=13" measured K=15.6
    on the evaluation prompts with nothing in the record saying so. Now the record carries it (unmatched), and
    a fixed schedule off its budget (a bug: its compute cannot depend on the prompt) fails the check."""
    from harness.runner import cache_check

    tea = _rec("teacache", 13, [30], 15.6)
    assert tea.unmatched and tea.speed.matched is False and cache_check(tea) is None  # marked, not a bug
    assert not _rec("teacache", 13, [30], 13.5).unmatched  # 3.8 %: matched
    assert "UNMATCHED" in cache_check(_rec("dpcache", 13, [37], 14.0, {"key_steps": 13}))  # 7.7 % over


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
    assert (
        isinstance(untimed.speed.wall_speedup, Unavailable) and untimed.speed.wall_speedup.reason == NOT_TIMED
    )
    assert "wall_speedup" in untimed.unavailable() and "transformer_wall_speedup" not in untimed.quality.extra
    assert untimed.timing.repeats == 0 and untimed.timing.method_s == []
    assert timed.speed.wall_speedup > 0 and len(timed.timing.method_s) == 1
    assert untimed.speed.flops_speedup == timed.speed.flops_speedup == pytest.approx(T / BUDGET)
    assert untimed.quality.psnr == timed.quality.psnr and untimed.speed.peak_mem is not None


def test_a_budget_on_the_methods_compute_floor_carries_a_saturation_caveat():
    """FirstBlockCache's K=13 on flux-tiny is its floor (only block 0 runs after step 0): said, not hidden."""
    from harness.budget import BudgetMatch
    from harness.scoring import compute_floor, saturation_caveat

    evals = [(0.01, 41.0), (0.1, 22.0), (1e3, 13.2), (1e4, 13.2)]
    floor = BudgetMatch("firstblockcache", 13, "threshold", 1e3, 13.2, True, evaluations=evals)
    tuned = BudgetMatch("firstblockcache", 22, "threshold", 0.1, 22.0, True, evaluations=evals)
    assert compute_floor(floor) == 13.2
    assert "saturated" in saturation_caveat("firstblockcache", 13, floor, 50)
    assert saturation_caveat("firstblockcache", 22, tuned, 50) is None
    assert saturation_caveat("dpcache", 13, None, 50) is None
