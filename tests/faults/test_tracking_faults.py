"""Tracking faults: a server that is down, one that goes down mid-run, two processes on one sqlite store under
different spellings. Every record is in the JSON lines, and — after `dpcache-bench replay` — in MLflow once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from mlflow_server import MlflowServer, free_port

from harness.records import ResultRecord
from harness.tracking import Tracker, TrackingUnavailableWarning

ROOT = Path(__file__).resolve().parents[2]


def _record(budget: int) -> ResultRecord:
    return ResultRecord.create(
        suite="faults",
        model="flux-tiny",
        scale="tiny",
        method="dpcache",
        budget=budget,
        num_steps=10,
        schedule=list(range(budget)),
        flops_speedup=10 / budget,
        psnr=30.0 + budget,
        prompts=["a zero"],
        reference_keys=["k0"],
        cache_hits=[10 - budget],
        device="cpu",
    )


def json_ids(path: Path) -> list[str]:
    return [json.loads(line)["provenance"]["record_id"] for line in path.read_text().splitlines()]


def mlflow_ids(uri: str) -> list[str]:
    """Record ids on finished child runs of every dpcache* experiment (duplicates kept, to catch them)."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in c.search_experiments() if e.name.startswith("dpcache")]
    runs = (
        c.search_runs(exps, "tags.`dpcache.role` = 'child' and attributes.status = 'FINISHED'")
        if exps
        else []
    )
    return sorted(r.data.tags["dpcache.record_id"] for r in runs if "dpcache.record_id" in r.data.tags)


def replay(bench_cli, json_in: Path, uri: str) -> str:
    res = bench_cli("replay", "--json-in", json_in, "--mlflow-uri", uri)
    assert res.rc == 0, res.err
    return res.out


def test_server_down_fails_over_and_replay_fills_mlflow(tmp_path, bench_cli):
    jl = tmp_path / "results.jsonl"
    tr = Tracker(jl, mlflow_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.warns(TrackingUnavailableWarning) as caught:
        assert [tr.log(_record(k)) for k in (9, 7, 5)] == [None] * 3
    assert len(caught) == 1 and "replay" in str(caught[0].message)  # said once
    ids = json_ids(jl)
    assert len(set(ids)) == 3
    store = f"sqlite:///{tmp_path / 'later.db'}"
    assert "replayed 3 record(s)" in replay(bench_cli, jl, store)
    assert mlflow_ids(store) == sorted(ids)
    assert "replayed 0 record(s)" in replay(bench_cli, jl, store) and mlflow_ids(store) == sorted(ids)


def test_server_going_down_mid_run_loses_nothing(tmp_path, bench_cli):
    server = MlflowServer(tmp_path).start()
    jl = tmp_path / "results.jsonl"
    try:
        tr = Tracker(jl, mlflow_uri=server.uri)
        with warnings.catch_warnings():
            warnings.simplefilter("error", TrackingUnavailableWarning)
            assert all(tr.log(_record(k)) for k in (9, 8))
        server.kill()
        with pytest.warns(TrackingUnavailableWarning) as caught:
            assert tr.log(_record(7)) is None and tr.log(_record(6)) is None
        assert len(caught) == 1
    finally:
        server.kill()
    ids = json_ids(jl)
    lines = [json.loads(x) for x in jl.read_text().splitlines()]
    assert len(set(ids)) == 4 and [bool(x["provenance"]["mlflow_run_id"]) for x in lines] == [
        True,
        True,
        False,
        False,
    ]
    store = f"sqlite:///{server.db}"  # the server's own store, without the server
    assert len(mlflow_ids(store)) == 2
    out = replay(bench_cli, jl, store)
    assert "replayed 2 record(s)" in out and "2 already there" in out
    assert mlflow_ids(store) == sorted(ids)


CHILD = textwrap.dedent(
    """
    import sys, warnings
    sys.path.insert(0, {tests!r})
    from test_tracking_faults import _record
    from harness.tracking import Tracker
    warnings.simplefilter("error")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    tr = Tracker("results.jsonl", mlflow_uri=sys.argv[1], invocation_id=sys.argv[2])
    for k in (9, 7, 5):
        assert tr.log(_record(k)), tr.mlflow_error
    tr.close()
    """
)


def test_two_processes_one_sqlite_store_under_two_spellings(tmp_path, bench_cli):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent)))
    spellings = ("sqlite:///mlflow.db", f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    helpers = __import__("os").pathsep.join([str(ROOT), str(ROOT / "tests")])  # mlflow_server for the child
    env = {**__import__("os").environ, "PYTHONPATH": helpers, "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), uri, f"inv-{n}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, uri in enumerate(spellings)
    ]
    for p in procs:
        _out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    jl = tmp_path / "results.jsonl"
    ids = json_ids(jl)
    assert len(set(ids)) == 6
    assert mlflow_ids(spellings[1]) == sorted(ids)  # nothing missing, nothing twice
    assert "replayed 0 record(s)" in replay(bench_cli, jl, spellings[1])
    assert mlflow_ids(spellings[1]) == sorted(ids)
