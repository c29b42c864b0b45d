"""The pytest plugin, driven with pytester: options group, markers, gates, --update-expected,
unavailable metrics reported, session summary, lazy imports, xdist workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[1]

SUITE = """
import os
import pytest
from harness.metrics import Unavailable
from harness.records import ResultRecord

PSNR = float(os.environ.get("DEMO_PSNR", "30.0"))

@pytest.mark.parametrize("budget", [int(b) for b in os.environ.get("DEMO_BUDGETS", "13").split(",")])
def test_quality(gate, bench_options, budget):
    gate(ResultRecord.create(suite="demo", model=f"demo-{bench_options.scale}", scale=bench_options.scale,
                             method="dpcache", budget=budget, num_steps=50, knobs={"M": 3, "O": 2}, psnr=PSNR,
                             flops_speedup=3.85, ssim=0.9, lpips=Unavailable("torchvision is not installed")))
"""
SPECS = {
    "psnr": {"value": 30.0, "tol": 0.5, "better": "higher"},
    "flops_speedup": {"value": 3.85, "tol": 0.01, "better": "higher"},
    "ssim": {"value": 0.9, "tol": 0.01, "better": "higher"},
}
EXPECTED = {"schema": 2, "models": {"demo-tiny": {"configs": {"dpcache-K13-M3-O2": SPECS}}}}


def _configs(path: Path, model: str = "demo-tiny") -> dict:
    return json.loads(path.read_text())["models"][model]["configs"]


@pytest.fixture
def suite(pytester, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pytester.makepyfile(test_demo=SUITE)
    (pytester.path / "expected.json").write_text(json.dumps(EXPECTED))
    return pytester


def run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "harness.plugin", "--mlflow-uri", "off", *args)


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


def test_gate_passes_and_reports_unavailable_and_where_records_are(suite):
    res = run(suite, "--json-out", "res.jsonl")
    res.assert_outcomes(passed=1)
    out = res.stdout.str()
    assert (
        "demo-tiny-dpcache-K13-M3-O2: lpips UNAVAILABLE (recorded as null, not passed): torchvision is not installed"
        in out
    )
    assert f"JSON lines {suite.path / 'res.jsonl'}" in out and "MLflow tracking off" in out
    line = json.loads((suite.path / "res.jsonl").read_text())
    assert line["quality"]["lpips"] is None and line["unavailable"] == {
        "lpips": "torchvision is not installed"
    }


def test_gate_regression_fails_with_message(suite, monkeypatch):
    monkeypatch.setenv("DEMO_PSNR", "27.5")
    res = run(suite)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "*dpcache gate failed for demo-tiny-dpcache-K13-M3-O2*",
            "*dpcache-K13-M3-O2: psnr regressed: measured 27.5 is below the bound*expected 30 ± tol 0.5*",
        ]
    )
    assert (suite.path / "results.jsonl").is_file()  # recorded even though it failed


def test_expected_metric_unavailable_fails_not_passes(suite):
    exp = json.loads((suite.path / "expected.json").read_text())
    exp["models"]["demo-tiny"]["configs"]["dpcache-K13-M3-O2"]["lpips"] = {
        "value": 0.1,
        "tol": 0.02,
        "better": "lower",
    }
    (suite.path / "expected.json").write_text(json.dumps(exp))
    res = run(suite)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "*dpcache-K13-M3-O2: lpips expected 0.1 ± tol 0.02*but it is unavailable (torchvision is not installed)*"
        ]
    )


def test_update_expected_rewrites_file(suite, monkeypatch):
    monkeypatch.setenv("DEMO_PSNR", "27.5")
    res = run(suite, "--update-expected")
    res.assert_outcomes(passed=1)
    assert f"--update-expected: rewrote {suite.path / 'expected.json'}" in res.stdout.str()
    data = _configs(suite.path / "expected.json")
    assert data["dpcache-K13-M3-O2"]["psnr"] == {"value": 27.5, "tol": 0.5, "better": "higher"}
    assert "lpips" not in data["dpcache-K13-M3-O2"]
    run(suite).assert_outcomes(passed=1)  # the new expectation holds


def test_no_update_without_flag(suite, monkeypatch):
    monkeypatch.setenv("DEMO_PSNR", "27.5")
    before = (suite.path / "expected.json").read_text()
    run(suite).assert_outcomes(failed=1)
    assert (suite.path / "expected.json").read_text() == before


def test_a_scale_without_baseline_is_ungated_by_name_and_bootstrapped(suite):
    """Old: expected.json was keyed by config tag alone, so `--scale medium` was judged against the tiny
    numbers. Now: every gate of a model without a baseline is reported UNGATED naming the missing baseline,
    fails only under --strict-gates, and --update-expected bootstraps it next to the tiny one."""
    path = suite.path / "expected.json"
    first = run(suite, "--scale", "medium")
    first.assert_outcomes(passed=1)
    assert (
        f"demo-medium-dpcache-K13-M3-O2: UNGATED: no baseline for model demo-medium in {path}"
        in first.stdout.str()
    )
    strict = run(suite, "--scale", "medium", "--strict-gates")
    strict.assert_outcomes(failed=1)
    assert (
        strict.ret == pytest.ExitCode.TESTS_FAILED
        and "UNGATED: no baseline for model demo-medium" in strict.stdout.str()
    )
    run(suite, "--scale", "medium", "--update-expected").assert_outcomes(passed=1)
    assert sorted(json.loads(path.read_text())["models"]) == ["demo-medium", "demo-tiny"]
    again = run(suite, "--scale", "medium", "--strict-gates")
    again.assert_outcomes(passed=1)
    assert "UNGATED" not in again.stdout.str()


def test_tiny_scale_is_strict_a_result_without_expectation_fails(suite, monkeypatch):
    """Old: a result with no expectation only printed a line and passed."""
    monkeypatch.setenv("DEMO_BUDGETS", "13,9")
    res = run(suite)
    res.assert_outcomes(passed=1, failed=1)
    assert "UNGATED: no expectation for dpcache-K9-M3-O2 in the demo-tiny baseline" in res.stdout.str()
    # another T or prompt count is not CI's configuration: reported, not failed (unless --strict-gates)
    run(suite, "--steps", "20").assert_outcomes(passed=2)


def test_an_expectation_without_a_result_fails_the_session(suite):
    """Old: an expectation whose configuration no longer produced a result went unnoticed."""
    exp = json.loads((suite.path / "expected.json").read_text())
    exp["models"]["demo-tiny"]["configs"]["dpcache-K25-M3-O2"] = SPECS
    (suite.path / "expected.json").write_text(json.dumps(exp))
    res = run(suite)
    res.assert_outcomes(passed=1)
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    assert (
        "FAILED (expectation without a result)" in res.stdout.str()
        and "dpcache-K25-M3-O2" in res.stdout.str()
    )
    assert run(suite, "-k", "13").ret == pytest.ExitCode.OK  # a narrowed run cannot tell


def test_a_damaged_expectation_file_is_one_clear_error(suite):
    exp = json.loads((suite.path / "expected.json").read_text())
    exp["models"]["demo-tiny"]["configs"]["dpcache-K13-M3-O2"]["psnr"]["tol"] = float("nan")
    (suite.path / "expected.json").write_text(json.dumps(exp))
    res = run(suite)
    res.assert_outcomes(failed=1)
    assert "psnr.tol: must be a finite number, got nan" in res.stdout.str()


def test_gpu_marker_skipped_without_cuda(suite):
    suite.makepyfile(test_gpu="import pytest\n@pytest.mark.gpu\ndef test_g():\n    pass\n")
    res = run(suite, "test_gpu.py", "--device", "cpu", "-rs")
    res.assert_outcomes(skipped=1)
    assert "no CUDA device" in res.stdout.str()


def test_embedded_mlflow_default_under_xdist(suite, monkeypatch):
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

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{suite.path.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name("dpcache-demo-medium")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}


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


class _FakeSession:
    """What `suites.common.result` reads of a BenchSession: a method whose budget became unreachable."""

    def __init__(self, directory: Path) -> None:
        from types import SimpleNamespace

        self.spec = SimpleNamespace(name="flux-tiny", family="flux", scale="tiny")
        self.suite_def = SimpleNamespace(directory=directory)
        self.logged: set[str] = set()
        self.logs: list = []

    def supports(self, method):
        return True, ""

    def tag(self, method, budget, base=None):
        return f"{method}-K{budget}"

    def record(self, method, budget):
        from harness.methods import UnreachableBudget

        raise UnreachableBudget(f"{method} cannot reach budget K={budget}: its floor is K=11.2")

    def not_run(self, method, budget, error):
        from harness.records import ResultRecord

        rec = ResultRecord.create(suite="flux", model="flux-tiny", scale="tiny", method=method, budget=budget,
                                  num_steps=50)  # fmt: skip
        rec.outcome.status, rec.outcome.reason = "not_run", str(error)
        return rec


def test_a_committed_configuration_that_becomes_unreachable_fails_not_skips(tmp_path):
    """Old: `suites/common.result` skipped it and the run exited 0 (3 passed became 3 skipped)."""
    from suites.common import result

    (tmp_path / "expected.json").write_text(
        json.dumps({"schema": 2, "models": {"flux-tiny": {"configs": {"teacache-K9": SPECS}}}})
    )
    session = _FakeSession(tmp_path)
    with pytest.raises(
        pytest.fail.Exception, match="committed expectation .* can no longer run: teacache cannot"
    ):
        result(session, "teacache", 9)
    logged = []
    tracker = type("T", (), {"log": lambda self, rec, **kw: logged.append(rec)})()
    with pytest.raises(pytest.skip.Exception, match="K=7"):  # nothing committed: skipped with the reason
        result(session, "teacache", 7, tracker)
    assert [(r.method, r.identity.budget, r.outcome.status) for r in logged] == [("teacache", 7, "not_run")]


def test_a_missing_tiny_model_fails_the_suite_not_skips(monkeypatch, tmp_path):
    """Old: a tiny model whose committed weights are absent skipped the whole suite."""
    from types import SimpleNamespace

    import harness.zoo.registry as registry
    from suites.common import Suite, open_session

    monkeypatch.delenv("DPCACHE_RANDOM_WEIGHTS", raising=False)
    spec = SimpleNamespace(name="flux-tiny", scale="tiny", builder=None)
    monkeypatch.setattr(registry, "get_spec", lambda name: spec)
    monkeypatch.setattr(registry, "availability", lambda s: (False, "weights file missing"))
    suite = Suite("flux", tmp_path, {"tiny": "flux-tiny", "full": "flux-dev"})
    config = SimpleNamespace(getoption=lambda name: "tiny", rootpath=tmp_path)
    with pytest.raises(
        pytest.fail.Exception, match="flux-tiny unavailable although its weights are committed"
    ):
        open_session(suite, SimpleNamespace(), config)
    spec.scale = "full"  # a full-scale model absent here is a skip, with the reason
    config = SimpleNamespace(getoption=lambda name: "full", rootpath=tmp_path)
    with pytest.raises(pytest.skip.Exception, match="weights file missing"):
        open_session(suite, SimpleNamespace(), config)


def test_unmatched_compute_is_marked_in_the_pytest_summary(suite):
    """Old: only the HTML column showed that TeaCache's "K=13" ran at K=15.6 on the evaluation prompts."""
    suite.makepyfile(
        test_unmatched="""
from harness.records import ResultRecord

def test_u(gate):
    gate(ResultRecord.create(suite="demo", model="demo-medium", scale="medium", method="teacache", budget=13,
                             num_steps=50, measured_k=15.6, cache_hits=[30]))
"""
    )
    res = run(suite, "test_unmatched.py")
    res.assert_outcomes(passed=1)
    assert (
        "demo-medium-teacache-K13: UNMATCHED compute: measured K=15.60 on the evaluation prompts vs K=13 "
        "(not ranked at K)" in res.stdout.str()
    )
