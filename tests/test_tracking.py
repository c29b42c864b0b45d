"""Tracking: JSON lines always; MLflow per suite and scale, parent summaries, per-step schedules; the store
lock keyed by the resolved database; an unreachable server loses nothing and costs seconds."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from harness.metrics import MetricResult, Unavailable
from harness.records import ResultRecord
from harness.tracking import (
    Tracker,
    TrackingUnavailableWarning,
    per_prompt_csv,
    record_id,
    resolve_tracking_uri,
    store_key,
    ui_command,
)


def _record(method="dpcache", budget=13, model="flux-tiny", **kw) -> ResultRecord:
    return ResultRecord.create(
        suite="flux",
        model=model,
        scale="tiny",
        method=method,
        budget=budget,
        num_steps=20,
        knobs={"M": 3, "O": 2},
        schedule=[0, 1, 2, 5, 9, 14, 19] if method != "full" else None,
        flops_speedup=2.8,
        psnr=MetricResult("psnr", 31.0, (30.0, 32.0)),
        lpips=Unavailable("torchvision is not installed", "lpips"),
        prompts=["a zero", "a one"],
        reference_keys=["k0", "k1"],
        cache_hits=[13, 14],
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


def test_store_key_is_the_resolved_database(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    absolute = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert (
        store_key("sqlite:///mlflow.db") == store_key(absolute) == store_key("sqlite:///./sub/../mlflow.db")
    )
    assert store_key("sqlite:///other.db") != store_key(absolute)
    assert store_key("http://Team:5000/") == store_key("http://team:5000")
    locks = {
        Tracker(tmp_path / "r.jsonl", mlflow_uri=u).mlflow_lock().lock_file
        for u in ("sqlite:///mlflow.db", absolute)
    }
    assert len(locks) == 1


def test_record_id_is_stable_and_ignores_tracking_fields():
    a, b = _record(), _record()
    b.provenance.mlflow_run_id = "abc"
    assert record_id("inv", a) == record_id("inv", b) != record_id("inv2", a)
    assert record_id("inv", _record(budget=9)) != record_id("inv", a)


def test_ui_command_points_at_the_store():
    assert ui_command("sqlite:////x/m.db") == "dpcache-bench ui --mlflow-uri sqlite:////x/m.db"
    assert "http://team:5000" in ui_command("http://team:5000")


def test_mlflow_not_imported_until_used():
    import subprocess
    import sys

    code = "import harness.tracking, sys; assert 'mlflow' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_per_prompt_csv():
    csv = per_prompt_csv(_record())
    assert csv.splitlines() == ["prompt_index,prompt,psnr", '0,"a zero",30.0', '1,"a one",32.0']


def test_embedded_store_parent_children_and_schedules(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DPCACHE_MLFLOW_EXPERIMENT", raising=False)
    monkeypatch.chdir(tmp_path)
    tr = Tracker(tmp_path / "results.jsonl", invocation_id="inv-1")
    run_a = tr.log(_record(), images=torch.rand(2, 3, 8, 8))
    run_b = tr.log(_record(budget=9))
    run_f = tr.log(_record(method="full", budget=None))
    run_c = tr.log(_record(model="wan-tiny"))
    tr.close()
    assert run_a and run_b and run_c and run_f and tr.mlflow_error is None
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [x["provenance"]["mlflow_run_id"] for x in lines] == [run_a, run_b, run_f, run_c]
    assert len({x["provenance"]["record_id"] for x in lines}) == 4

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("dpcache-flux-tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    a, b, c = (client.get_run(r) for r in (run_a, run_b, run_c))
    assert (
        a.data.tags["mlflow.parentRunId"]
        == b.data.tags["mlflow.parentRunId"]
        != c.data.tags["mlflow.parentRunId"]
    )
    assert len({a.info.run_name, b.info.run_name, c.info.run_name}) == 3
    assert a.data.params["config_tag"] == "dpcache-K13-M3-O2" and a.data.metrics["psnr"] == 31.0
    assert (
        "lpips" not in a.data.metrics and a.data.tags["unavailable.lpips"] == "torchvision is not installed"
    )
    assert a.data.metrics["cache_hits"] == 13.5  # per sample, not summed over prompts
    assert "psnr.per_prompt" not in a.data.metrics
    computed = sorted((m.step, m.value) for m in client.get_metric_history(run_a, "computed"))
    assert [int(v) for _, v in computed] == [int(s in {0, 1, 2, 5, 9, 14, 19}) for s in range(20)]
    assert [m.value for m in client.get_metric_history(run_f, "computed")] == [1.0] * 20
    arts = {f.path for f in client.list_artifacts(run_a)}
    assert {"record.json", "per_prompt.csv", "per_prompt.json", "schedule.png"} <= arts
    table = json.loads(Path(client.download_artifacts(run_a, "per_prompt.json")).read_text())
    assert table["columns"][:4] == ["prompt_index", "prompt", "seed", "cache_hits"]
    assert [row[4] for row in table["data"]] == [30.0, 32.0]
    assert [d.dataset.name for d in a.inputs.dataset_inputs] == ["flux-tiny-evaluation-prompts"]
    parent = client.get_run(a.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["dpcache.role"] == "parent"
    p_arts = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary_table.json", "pareto.png", "strips.png"} <= p_arts
    summary = Path(client.download_artifacts(parent.info.run_id, "summary.csv")).read_text().splitlines()
    assert len(summary) == 4 and summary[0].startswith("method,budget,flops_speedup")
    assert "dpcache-flux-tiny" in tr.summary() and "dpcache-bench ui --mlflow-uri" in tr.summary()


def test_experiment_is_settable(tmp_path, monkeypatch):
    monkeypatch.setenv("DPCACHE_MLFLOW_EXPERIMENT", "team-night")
    uri = f"sqlite:///{tmp_path}/m.db"
    Tracker(tmp_path / "r.jsonl", mlflow_uri=uri).log(_record())
    Tracker(tmp_path / "r.jsonl", mlflow_uri=uri, experiment="explicit").log(_record())
    from mlflow.tracking import MlflowClient

    names = {e.name for e in MlflowClient(tracking_uri=uri).search_experiments()}
    assert {"team-night", "explicit"} <= names and "dpcache-flux-tiny" not in names


def test_unreachable_server_keeps_records_and_says_so_once(tmp_path, monkeypatch):
    import harness.tracking as tracking

    probes = []
    real_connect = tracking.socket.create_connection

    def connect(address, timeout=None, *a, **k):
        probes.append((address, timeout))
        return real_connect(address, timeout, *a, **k)

    monkeypatch.setattr(tracking.socket, "create_connection", connect)
    tr = Tracker(tmp_path / "out" / "results.jsonl", mlflow_uri="http://127.0.0.1:9")
    with pytest.warns(TrackingUnavailableWarning) as caught:
        logged = [tr.log(_record()), tr.log(_record(budget=9))]  # the second: no attempt, no warning
    assert logged == [None, None]
    tr.close()
    assert len(caught) == 1
    assert "http://127.0.0.1:9 was unreachable" in str(caught[0].message)
    assert "dpcache-bench replay --json-in" in str(caught[0].message)
    # one probe, bounded (its wall-clock cost is benchmarks/bench_tracking.py's to print, not a unit test's)
    assert probes == [(("127.0.0.1", 9), tracking.PROBE_TIMEOUT_S)] and tracking.PROBE_TIMEOUT_S <= 3
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["identity"]["budget"] == 9
    assert "2 record(s) not in MLflow" in tr.summary() and "replay" in tr.summary()


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
    assert len(lines) == 80 and all(json.loads(x)["identity"]["suite"] == "flux" for x in lines)
