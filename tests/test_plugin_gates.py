"""The plugin's `gate` fixture on the demo suite (pytester): a result passes, regresses or lacks a metric
against expected.json; --update-expected rewrites it; scales, expectations and results that do not match up."""

from __future__ import annotations

import json

import pytest
from plugin_demo import SPECS, configs, make_suite, run

pytest_plugins = ["pytester"]


@pytest.fixture
def suite(pytester, monkeypatch):
    return make_suite(pytester, monkeypatch)


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
    data = configs(suite.path / "expected.json")
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
