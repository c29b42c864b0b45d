"""Computed steps for every method: traced per prompt and CFG branch, kept in the record, drawn as shaded
strips in the report and logged as MLflow's per-step `computed` fraction for online (baseline) methods."""

from __future__ import annotations

import json
import re

import pytest
import torch

from harness.records import ResultRecord
from harness.report import build_report
from harness.report.data import load_records
from harness.report.plots import schedule_records
from harness.step_trace import StepTrace, computed_fractions, merge_passes

T = 6
INVOCATION = "20260102T030405-computed"


class _Attn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_q(x)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _Attn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(x)


class _Transformer(torch.nn.Module):
    """Two blocks; a call with `cached=True` reuses the output of the first block for the last one (what a
    block cache does), so only calls without it run the last block's attention."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([_Block(), _Block()])

    def forward(self, x: torch.Tensor, cached: bool = False) -> torch.Tensor:
        x = self.transformer_blocks[0](x)
        return x if cached else self.transformer_blocks[1](x)


def test_step_trace_splits_cfg_branches_and_sees_skipped_blocks():
    tr = _Transformer()
    x = torch.zeros(1, 4)
    cond_cached, uncond_cached = {1, 2, 4}, {1, 3, 4}  # each branch decides on its own
    with StepTrace(tr) as trace:
        for step in range(T):
            tr(x, cached=step in cond_cached)
            tr(x, cached=step in uncond_cached)
    assert trace.steps(T) == [[0, 3, 5], [0, 2, 5]]
    assert trace.steps(5) is None  # 12 calls do not divide into 5 steps
    assert not tr._forward_pre_hooks and not tr.transformer_blocks[1].attn.to_q._forward_hooks  # removed


def test_step_trace_returns_none_when_calls_do_not_fit_the_steps():
    tr = _Transformer()
    with StepTrace(tr) as trace:
        for _ in range(T + 1):
            tr(torch.zeros(1, 4))
    assert trace.steps(T) is None and trace.steps(T + 1) == [list(range(T + 1))]


def test_fractions_and_merge():
    passes, branches = merge_passes([[[0, 3, 5], [0, 2, 5]], [[0, 1, 5], [0, 2, 5]]])
    assert branches == 2 and len(passes) == 4
    assert computed_fractions(passes, T) == [1.0, 0.25, 0.5, 0.25, 0.0, 1.0]
    assert merge_passes([[[0]], None]) == (None, None)  # an untraced prompt: no partial picture
    assert merge_passes([[[0]], [[0], [1]]]) == (None, None)  # branch counts differ


def _record(method: str, budget: int, computed: list[list[int]] | None, key_steps=None, **kw) -> ResultRecord:
    rec = ResultRecord.create(
        suite="flux",
        model="flux-tiny",
        scale="tiny",
        method=method,
        budget=budget,
        num_steps=T,
        schedule=key_steps,
        prompts=["a zero", "a one"],
        device="cpu",
        **kw,
    )
    rec.schedule.computed_steps = computed
    rec.schedule.computed_branches = 2 if computed else None
    return rec


TEACACHE = [[0, 3, 5], [0, 2, 5], [0, 1, 5], [0, 2, 5]]  # 2 prompts × 2 branches


def test_record_keeps_computed_steps_and_old_lines_still_load():
    rec = _record("teacache", 3, TEACACHE, flops_speedup=2.0)
    back = ResultRecord.from_dict(json.loads(rec.to_json()))
    assert back.schedule.computed_steps == TEACACHE and back.schedule.computed_branches == 2
    assert back.computed_fraction() == [1.0, 0.25, 0.5, 0.25, 0.0, 1.0]
    old = rec.to_dict()
    del old["schedule"]["computed_steps"], old["schedule"]["computed_branches"]  # a line from before
    assert ResultRecord.from_dict(old).computed_fraction() is None
    dp = _record("dpcache", 3, None, key_steps=[0, 1, 4])
    assert ResultRecord.from_dict(dp.to_dict()).computed_fraction() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


@pytest.fixture
def report(tmp_path):
    recs = [
        _record("full", T, None, key_steps=list(range(T)), psnr=100.0, flops_speedup=1.0),
        _record("dpcache", 3, None, key_steps=[0, 1, 4], psnr=30.0, flops_speedup=2.0),
        _record("teacache", 3, TEACACHE, psnr=28.0, flops_speedup=2.0),
        _record("fewer-steps", 3, None, psnr=27.0, flops_speedup=2.0),
    ]
    src = tmp_path / "results.jsonl"
    src.write_text("".join(json.dumps({"invocation": INVOCATION, **r.to_dict()}) + "\n" for r in recs))
    return src, build_report(src, tmp_path / "out")


def test_report_draws_baseline_strips_shaded_by_fraction(report):
    src, page = report
    views = load_records(src)[INVOCATION]
    assert [r["method"] for r in schedule_records(views)] == ["dpcache", "teacache"]
    text = page.read_text()
    section = text.split("<h3>Computed steps</h3>")[1].split("<h3>")[0]
    assert "flux-tiny/schedules.png" in section and "fraction of prompts × branches" in section
    assert "No strip: fewer-steps-K3" in section
    table = text.split("<h3>Results</h3>")[1]
    assert "computed steps (3/6): 0, 1, 4" in table  # the fixed schedule, as before
    tea = re.search(r'title="(computed steps \(mean 3\.0/6 over 4 passes\)[^"]*)"', table)
    assert tea and "1:0.25" in tea[1] and "2:0.50" in tea[1] and "4:" not in tea[1]
    cells = table.split(tea[0])[1].split("</span>")[0]
    assert cells.count("<i") == T and "<i></i>" in cells  # step 4: predicted on every pass
    colours = re.findall(r'<i style="background:(#[0-9a-f]{6})"></i>', cells)
    assert len(colours) == 5 and len(set(colours)) == 3  # fractions 1, .25, .5, .25, 1: three shades


def test_mlflow_logs_the_computed_fraction_of_an_online_method(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from harness.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DPCACHE_MLFLOW_EXPERIMENT", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracker(tmp_path / "results.jsonl", mlflow_uri=uri, invocation_id="inv-c")
    run_t = tr.log(_record("teacache", 3, TEACACHE, psnr=28.0, flops_speedup=2.0))
    run_f = tr.log(_record("fewer-steps", 3, None, psnr=27.0, flops_speedup=2.0))
    tr.close()
    client = MlflowClient(tracking_uri=uri)
    hist = sorted((m.step, m.value) for m in client.get_metric_history(run_t, "computed"))
    assert hist == list(enumerate([1.0, 0.25, 0.5, 0.25, 0.0, 1.0]))
    assert client.get_metric_history(run_f, "computed") == []  # no T-step strip for fewer-steps
    assert "schedule.png" in {f.path for f in client.list_artifacts(run_t)}
    parent = client.get_run(run_t).data.tags["mlflow.parentRunId"]
    assert "strips.png" in {f.path for f in client.list_artifacts(parent)}
    from harness.tracking_mlflow import MlflowLogger

    logger = MlflowLogger(uri)
    rows = logger.child_rows(client.get_run(run_t).info.experiment_id, parent)
    assert {r["method"]: r["computed"] for r in rows} == {
        "teacache": [1.0, 0.25, 0.5, 0.25, 0.0, 1.0],
        "fewer-steps": None,
    }


def test_runner_traces_every_method_and_matches_dpcache_schedule(tmp_path):
    """flux-tiny (random weights, T = 8, one prompt, CFG as two calls): DPCache's traced steps are its key
        steps on both branches; FORA (decides online) gets computed steps too; fewer-steps (K steps) none. The
    heatmap comes with its cost curve as data (cost_curve.json)."""
    from harness.runner import BenchSession
    from harness.zoo.flux_tiny import build_pipeline
    from harness.zoo.registry import get_spec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = BenchSession(
            get_spec("flux-tiny"),
            build_pipeline(trained=False),
            steps=8,
            num_prompts=1,
            num_calibration=1,
            repeats=0,
            warmup=0,
            cache_dir=tmp_path / "cache",
            progress=False,
        )
        dp, fora, few = s.record("dpcache", 5), s.record("fora", 4), s.record("fewer-steps", 4)
        png = s.heatmap(tmp_path / "plots" / "cost_tensor.png")
    finally:
        torch.set_num_threads(threads)
    assert dp.schedule.computed_branches == 2
    assert dp.schedule.computed_steps == [dp.schedule.key_steps] * 2
    steps = fora.schedule.computed_steps
    assert steps and fora.schedule.computed_branches == 2 and fora.schedule.key_steps is None
    assert 0 in steps[0] and len(steps[0]) < 8  # the first step computes, some steps reuse the cache
    assert sum(fora.computed_fraction()) == pytest.approx(fora.speed.measured_k, abs=1.0)
    assert few.schedule.computed_steps is None and few.computed_fraction() is None
    from harness.report.data import read_cost_curve

    curve = read_cost_curve(png.with_name("cost_curve.json"))  # the report marks the chosen K on it
    assert png.is_file() and curve and 5 in dict(curve["exact"])
