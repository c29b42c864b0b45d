"""The pytest plugin's mechanics, driven with pytester: options group, markers, lazy imports, parsed
options, the gpu marker and per-worker GPU pinning, test ids and the reference store, xdist workers.
Its gates are tests/test_plugin_gates.py's; the suites' outcomes tests/test_suite_outcomes.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from plugin_demo import ROOT, make_suite, run

pytest_plugins = ["pytester"]


@pytest.fixture
def suite(pytester, monkeypatch):
    return make_suite(pytester, monkeypatch)


def test_options_in_one_group_in_help(pytester):
    res = pytester.runpytest_subprocess("-p", "harness.plugin", "--help")
    out = res.stdout.str()
    group = out[out.index("dpcache benchmark:") :]
    group = group[: group.index("\n\n")]
    for opt in (
        "--scale={tiny,medium,full}",
        "--budgets",
        "--methods",
        "--steps",
        "--num-prompts",
        "--device",
        "--mlflow-uri",
        "--json-out",
        "--refs-dir",
        "--update-expected",
        "--update-references",
        "--gate-timing",
        "--repeats",
        "--strict-gates",
    ):
        assert opt in group, opt


def test_markers_registered(pytester):
    out = pytester.runpytest_subprocess("-p", "harness.plugin", "--markers").stdout.str()
    for m in ("speedup", "quality", "calibration", "schedule", "gpu", "nightly"):
        assert f"@pytest.mark.{m}:" in out


def test_plugin_import_is_light():
    code = "import harness.plugin, sys; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules and 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_bench_options_parsed(suite):
    suite.makepyfile(
        test_opts="""
def test_opts(bench_options):
    o = bench_options
    assert o.scale == "medium" and o.budgets == [25, 13, 9] and o.methods == ["full", "dpcache"]
    assert o.steps == 50 and o.num_prompts == 2 and o.device == "cpu" and o.update_references and o.gate_timing
    assert o.json_out.name == "out.jsonl" and o.refs_dir.name == "refs" and o.repeats == 7
"""
    )
    res = run(
        suite,
        "test_opts.py",
        "--scale",
        "medium",
        "--budgets",
        "25,13,9",
        "--methods",
        "full,dpcache",
        "--steps",
        "50",
        "--num-prompts",
        "2",
        "--device",
        "cpu",
        "--update-references",
        "--gate-timing",
        "--json-out",
        "out.jsonl",
        "--refs-dir",
        "refs",
        "--repeats",
        "7",
    )
    res.assert_outcomes(passed=1)
    for args, message in (
        (("--budgets", "a,b"), "--budgets must be comma-separated integers"),
        (("--repeats", "-1"), "--repeats must be >= 0"),
        (("--repeats", "0", "--gate-timing"), "--gate-timing needs >= 5 timed runs"),
    ):
        bad = run(suite, "test_opts.py", *args)
        assert bad.ret == pytest.ExitCode.USAGE_ERROR
        assert message in bad.stderr.str()


def test_gpu_marker_skipped_without_cuda(suite):
    suite.makepyfile(test_gpu="import pytest\n@pytest.mark.gpu\ndef test_g():\n    pass\n")
    res = run(suite, "test_gpu.py", "--device", "cpu", "-rs")
    res.assert_outcomes(skipped=1)
    assert "no CUDA device" in res.stdout.str()


def test_each_xdist_worker_is_pinned_to_one_gpu(monkeypatch):
    from harness.plugin import _pin_worker_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    _pin_worker_gpu("gw4", "cuda")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("DPCACHE_NUM_GPUS", "2")
    _pin_worker_gpu("gw3", "cuda")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    _pin_worker_gpu("gw3", "cpu")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_bench_params_ids_and_reference_store(suite):
    suite.makepyfile(
        test_ids="""
import pytest, torch
from harness.plugin import bench_params

@pytest.mark.parametrize(("method", "budget"), bench_params("flux-tiny", ["full", "dpcache"], [25, 13]))
def test_speedup(method, budget, reference_store, bench_options):
    assert reference_store.root == bench_options.refs_dir
    assert reference_store.refresh is True
"""
    )
    res = run(suite, "test_ids.py", "--collect-only", "-q", "-k", "K13")
    res.stdout.fnmatch_lines(
        [
            "test_ids.py::test_speedup[[]flux-tiny-full-K13[]]",
            "test_ids.py::test_speedup[[]flux-tiny-dpcache-K13[]]",
        ]
    )
    assert "K25" not in res.stdout.str()
    run(suite, "test_ids.py", "--refs-dir", "refs", "--update-references").assert_outcomes(passed=4)


@pytest.fixture
def mlflow_client():
    """MlflowClient, imported before pytester snapshots sys.modules: pytester drops what a test imported at
    its end, and numpy (which mlflow imports) cannot be imported a second time in one process."""
    from mlflow.tracking import MlflowClient

    return MlflowClient


def test_embedded_mlflow_default_under_xdist(mlflow_client, suite, monkeypatch):
    """Two xdist workers, default (embedded sqlite) store: records in JSON lines and MLflow, one parent."""
    suite.makepyfile(
        test_two="""
from harness.records import ResultRecord
import pytest

@pytest.mark.parametrize("budget", [25, 13])
def test_b(gate, budget):
    gate(ResultRecord.create(suite="demo", model="demo-medium", scale="medium", method="dpcache", budget=budget,
                             num_steps=50))
"""
    )
    env_path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", env_path)
    res = suite.runpytest_subprocess("-p", "harness.plugin", "-n", "2", "test_two.py", timeout=300)
    res.assert_outcomes(passed=2)
    out = res.stdout.str()
    assert f"JSON lines {suite.path / 'results.jsonl'}" in out
    assert f"MLflow store sqlite:///{suite.path.resolve()}/mlflow.db" in out
    lines = [json.loads(x) for x in (suite.path / "results.jsonl").read_text().splitlines()]
    assert (
        sorted(x["identity"]["budget"] for x in lines) == [13, 25]
        and len({x["invocation"] for x in lines}) == 1
    )

    client = mlflow_client(tracking_uri=f"sqlite:///{suite.path.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name("dpcache-demo-medium")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
