"""Result records and regression gates: config tags, JSON form, direction-aware checks, noise-aware
timing, explicit expected.json updates."""

from __future__ import annotations

import json
import os

import pytest

from harness.gates import (
    ExpectedFormatError,
    check,
    compare_samples,
    load_expected,
    mann_whitney_greater,
    update_expected,
)
from harness.metrics import MetricResult, Unavailable
from harness.records import ResultRecord, config_tag, provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _rec(**kw) -> ResultRecord:
    base = dict(
        suite="flux",
        model="flux-tiny",
        scale="tiny",
        method="dpcache",
        budget=13,
        num_steps=50,
        knobs={"M": 3, "O": 2},
    )
    base.update(kw)
    return ResultRecord(**base)


def test_config_tag_deterministic():
    assert config_tag("dpcache", 13, M=3, O=2) == "dpcache-K13-M3-O2" == config_tag("dpcache", 13, O=2, M=3)
    assert config_tag("full", None) == "full"
    assert config_tag("teacache", 9, thresh=0.25, skip=None) == "teacache-K9-thresh0.25"
    assert _rec().config_tag == "dpcache-K13-M3-O2" and _rec().test_id == "flux-tiny-dpcache-K13-M3-O2"


def test_record_json_maps_unavailable_to_null_with_reason():
    r = _rec(
        psnr=MetricResult("psnr", 30.5, (30.0, 31.0)),
        lpips=Unavailable("AlexNet weights missing"),
        schedule=[0, 3, 49],
        extra_metrics={"sfid": Unavailable("no stats")},
        **provenance("cpu"),
    )
    d = json.loads(r.to_json())
    for f in (
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
        "per_prompt",
        "peak_mem",
        "cache_hits",
        "git_sha",
        "versions",
        "device",
    ):
        assert f in d, f
    assert d["psnr"] == 30.5 and d["per_prompt"] == {"psnr": [30.0, 31.0]} and d["full_steps"] == 3
    assert d["lpips"] is None and d["unavailable"] == {"lpips": "AlexNet weights missing", "sfid": "no stats"}
    back = ResultRecord.from_dict(d)
    assert isinstance(back.lpips, Unavailable) and back.lpips.reason == "AlexNet weights missing"
    assert back.to_dict() == r.to_dict()


EXPECTED = {
    "dpcache-K13-M3-O2": {
        "psnr": {"value": 30.0, "tol": 0.5, "better": "higher"},
        "flops_speedup": {"value": 3.85, "tol": 0.01, "better": "higher"},
        "lpips": {"value": 0.1, "tol": 0.02, "better": "lower"},
    }
}


def test_check_passes_within_tolerance():
    assert check(_rec(psnr=29.6, flops_speedup=3.845, lpips=0.11), EXPECTED) == []


def test_check_direction_aware_messages():
    fails = check(_rec(psnr=28.0, flops_speedup=3.9, lpips=0.2), EXPECTED)
    assert [f.metric for f in fails] == ["lpips", "psnr"]
    msg = {f.metric: f.message for f in fails}
    assert "dpcache-K13-M3-O2" in msg["psnr"] and "psnr" in msg["psnr"]
    assert "measured 28" in msg["psnr"] and "expected 30" in msg["psnr"] and "tol 0.5" in msg["psnr"]
    assert "above" in msg["lpips"] and "lower is better" in msg["lpips"]


def test_expected_but_unavailable_or_missing_fails():
    fails = check(
        _rec(psnr=30.0, flops_speedup=3.85, lpips=Unavailable("torchvision is not installed")), EXPECTED
    )
    assert len(fails) == 1 and "unavailable (torchvision is not installed)" in fails[0].message
    fails = check(_rec(psnr=30.0, flops_speedup=3.85), EXPECTED)
    assert len(fails) == 1 and "not measured" in fails[0].message


def test_unknown_config_is_not_gated():
    assert check(_rec(method="other", psnr=1.0), EXPECTED) == []


def test_load_expected_validates(tmp_path):
    assert load_expected(tmp_path / "none.json") == {}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": {"psnr": {"value": 1}}}))
    with pytest.raises(ExpectedFormatError, match="needs 'value' and 'tol'"):
        load_expected(bad)


def test_update_expected_rewrites_atomically_and_keeps_tolerances(tmp_path):
    path = tmp_path / "expected.json"
    path.write_text(
        json.dumps(
            {
                "dpcache-K13-M3-O2": {
                    "psnr": {"value": 35.0, "tol": 0.7, "better": "higher"},
                    "lpips": {"value": 0.1, "tol": 0.02, "better": "lower"},
                }
            }
        )
    )
    recs = [
        _rec(psnr=31.25, flops_speedup=3.846, lpips=Unavailable("no weights")),
        _rec(budget=9, psnr=25.0, flops_speedup=5.5),
    ]
    update_expected(path, recs)
    data = json.loads(path.read_text())
    assert data["dpcache-K13-M3-O2"]["psnr"] == {"value": 31.25, "tol": 0.7, "better": "higher"}
    assert data["dpcache-K13-M3-O2"]["lpips"]["value"] == 0.1  # unavailable: old expectation stays
    assert data["dpcache-K9-M3-O2"]["flops_speedup"] == {"value": 5.5, "tol": 0.01, "better": "higher"}
    assert "ssim" not in data["dpcache-K9-M3-O2"]  # not measured → not written
    assert [p.name for p in tmp_path.iterdir()] == ["expected.json"]


def test_mann_whitney_exact_and_normal():
    assert mann_whitney_greater([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(1 / 252)
    assert mann_whitney_greater([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(1.0)
    big_a, big_b = [float(i) for i in range(30, 60)], [float(i) for i in range(30)]
    assert mann_whitney_greater(big_a, big_b) < 1e-6


def test_timing_compare_noise_aware():
    base = [1.00, 1.02, 0.98, 1.01, 0.99]
    slower = [1.30, 1.32, 1.29, 1.31, 1.33]
    noisy = [0.6, 1.5, 0.7, 1.4, 1.0]
    assert compare_samples(base, slower, better="lower").regressed
    assert not compare_samples(base, noisy, better="lower").regressed
    assert not compare_samples(base, [1.03] * 5, better="lower").regressed  # significant but below factor


def test_timing_gates_only_when_asked_and_noise_aware():
    exp = {
        "dpcache-K13-M3-O2": {
            "wall_speedup": {
                "value": 3.0,
                "tol": 0.3,
                "better": "higher",
                "samples": [3.0, 3.1, 2.9, 3.05, 2.95],
            }
        }
    }
    slow = _rec(wall_speedup=2.0, timing={"wall_speedup": [2.0, 2.1, 1.9, 2.05, 1.95]})
    assert check(slow, exp) == []
    fails = check(slow, exp, gate_timing=True)
    assert len(fails) == 1 and "Mann-Whitney" in fails[0].message
    noisy = _rec(wall_speedup=2.6, timing={"wall_speedup": [1.0, 5.0, 2.6, 4.0, 1.5]})
    assert check(noisy, exp, gate_timing=True) == []  # outside the band but within noise
    no_samples = _rec(wall_speedup=2.0)
    assert len(check(no_samples, exp, gate_timing=True)) == 1
