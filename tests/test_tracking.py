"""Tracking: JSON lines always; MLflow embedded by default, parent/child runs; unreachable server loses nothing."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import pytest
import torch

from harness.metrics import MetricResult, Unavailable
from harness.records import ResultRecord
from harness.tracking import Tracker, TrackingUnavailableWarning, per_prompt_csv, resolve_tracking_uri

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _record(method="dpcache", budget=13, model="flux-tiny", **kw) -> ResultRecord:
    return ResultRecord(
        suite="flux",
        model=model,
        scale="tiny",
        method=method,
        budget=budget,
        num_steps=20,
        knobs={"M": 3, "O": 2},
        schedule=[0, 1, 2, 5, 9, 14, 19],
        flops_speedup=2.8,
        psnr=MetricResult("psnr", 31.0, (30.0, 32.0)),
        lpips=Unavailable("torchvision is not installed", "lpips"),
        prompts=["a zero", "a one"],
        reference_key=["k0", "k1"],
        git_sha="deadbeef",
        versions={"torch": torch.__version__},
        device="cpu",
        **kw,
    )


def test_resolve_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    assert resolve_tracking_uri(None) == "http://team:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db" and resolve_tracking_uri("off") is None


def test_mlflow_not_imported_until_used():
    import subprocess
    import sys

    code = "import harness.tracking, sys; assert 'mlflow' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_per_prompt_csv():
    csv = per_prompt_csv(_record())
    assert csv.splitlines() == ["prompt_index,prompt,psnr", '0,"a zero",30.0', '1,"a one",32.0']


def test_embedded_default_store_parent_and_children(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    tr = Tracker(tmp_path / "results.jsonl", invocation_id="inv-1")
    images = torch.rand(2, 3, 8, 8)
    run_a = tr.log(_record(), images=images)
    run_b = tr.log(_record(budget=9))
    run_c = tr.log(_record(model="wan-tiny"))
    tr.close()
    assert run_a and run_b and run_c and tr.mlflow_error is None
    assert (tmp_path / "mlflow.db").is_file()
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [x["config_tag"] for x in lines] == ["dpcache-K13-M3-O2", "dpcache-K9-M3-O2", "dpcache-K13-M3-O2"]
    assert lines[0]["lpips"] is None and lines[0]["unavailable"] == {"lpips": "torchvision is not installed"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    a, b, c = (client.get_run(r) for r in (run_a, run_b, run_c))
    assert (
        a.data.tags["mlflow.parentRunId"]
        == b.data.tags["mlflow.parentRunId"]
        != c.data.tags["mlflow.parentRunId"]
    )
    parent = client.get_run(a.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["dpcache.model"] == "flux-tiny" and parent.info.status == "FINISHED"
    assert a.data.params["config_tag"] == "dpcache-K13-M3-O2" and a.data.params["budget"] == "13"
    assert a.data.metrics["psnr"] == 31.0 and "lpips" not in a.data.metrics
    assert a.data.tags["unavailable.lpips"] == "torchvision is not installed"
    assert a.data.tags["git_sha"] == "deadbeef" and a.data.tags["device"] == "cpu"
    assert [m.value for m in client.get_metric_history(run_a, "psnr.per_prompt")] == [30.0, 32.0]
    arts = {f.path for f in client.list_artifacts(run_a)}
    assert {"record.json", "per_prompt.csv", "schedule.png"} <= arts
    assert any(p.startswith("images") for p in arts)
    assert (tmp_path / "mlruns").is_dir()
    assert "mlflow.db" in tr.summary() and "3 result record(s)" in tr.summary()


def test_unreachable_server_keeps_records(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tr = Tracker(tmp_path / "out" / "results.jsonl", mlflow_uri="http://127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.warns(
        TrackingUnavailableWarning,
        match=r"http://127.0.0.1:9 was unreachable .*records are in .*results.jsonl",
    ):
        assert tr.log(_record()) is None
    assert tr.log(_record(budget=9)) is None  # no second attempt, no second wait
    tr.close()
    assert time.perf_counter() - t0 < 30
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["budget"] == 9
    assert "unreachable" in tr.summary() and "results.jsonl" in tr.summary()


def _append(path: str, n: int) -> None:
    tr = Tracker(path, mlflow_uri="off")
    for i in range(n):
        tr.log(_record(budget=i + 1, extra_metrics={"pad": float(i)}))


def test_json_lines_parallel_appends_stay_whole(tmp_path):
    ctx = mp.get_context("fork")
    path = str(tmp_path / "r.jsonl")
    procs = [ctx.Process(target=_append, args=(path, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 80 and all(json.loads(x)["suite"] == "flux" for x in lines)
