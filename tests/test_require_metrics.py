"""--require-metrics: a result lacking a required metric fails, naming why it is unavailable (the nightly at
full scale), instead of being recorded as n/a."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.gates import missing_required
from harness.metrics import Unavailable
from harness.records import ResultRecord

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[1]

SUITE = """
import pytest
from harness.metrics import Unavailable
from harness.records import ResultRecord

def test_quality(gate, bench_options):
    gate(ResultRecord.create(suite="demo", model="demo-tiny", scale="tiny", method="dpcache", budget=13,
                             num_steps=50, knobs={"M": 3, "O": 2}, psnr=30.0, flops_speedup=3.85, ssim=0.9,
                             lpips=Unavailable("AlexNet backbone weights are not in the torch hub cache")))
"""
SPECS = {
    "psnr": {"value": 30.0, "tol": 0.5, "better": "higher"},
    "flops_speedup": {"value": 3.85, "tol": 0.01, "better": "higher"},
    "ssim": {"value": 0.9, "tol": 0.01, "better": "higher"},
}


def _rec(**kw) -> ResultRecord:
    base = dict(suite="flux", model="flux-dev", scale="full", method="dpcache", budget=13, num_steps=50)
    return ResultRecord.create(**(base | kw))


def test_missing_required_names_each_reason():
    rec = _rec(psnr=20.0, ssim=0.8, lpips=Unavailable("no backbone"), image_reward=Unavailable("no env"))
    assert missing_required(rec, []) == []
    assert missing_required(rec, ["psnr", "ssim"]) == []
    assert missing_required(rec, ["psnr", "lpips"]) == ["lpips: unavailable (no backbone)"]
    assert missing_required(rec, ["all"]) == [
        "image_reward: unavailable (no env)",
        "lpips: unavailable (no backbone)",
    ]
    assert missing_required(rec, ["clip_score"]) == ["clip_score: not measured for dpcache-K13"]


@pytest.fixture
def suite(pytester, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pytester.makepyfile(test_demo=SUITE)
    expected = {"schema": 2, "models": {"demo-tiny": {"configs": {"dpcache-K13-M3-O2": SPECS}}}}
    (pytester.path / "expected.json").write_text(json.dumps(expected))
    return pytester


def _run(suite, *extra: str):
    return suite.runpytest_subprocess(
        "-p", "harness.plugin", "--mlflow-uri", "off", "--json-out", "r.jsonl", *extra
    )


def test_without_the_option_an_unavailable_metric_is_recorded_and_passes(suite):
    _run(suite).assert_outcomes(passed=1)


def test_required_metric_unavailable_fails_the_result_with_its_reason(suite):
    res = _run(suite, "--require-metrics", "psnr,lpips")
    res.assert_outcomes(failed=1)
    out = res.stdout.str()
    assert "lacks required metrics (--require-metrics)" in out
    assert "lpips: unavailable (AlexNet backbone weights are not in the torch hub cache)" in out
    # the record is still kept: nothing is lost when the verdict fails
    assert json.loads((suite.path / "r.jsonl").read_text())["unavailable"]["lpips"].startswith("AlexNet")
    _run(suite, "--require-metrics", "psnr,ssim").assert_outcomes(passed=1)
