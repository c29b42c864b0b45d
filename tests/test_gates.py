"""Regression gates: expectations keyed by model (and device class for wall-clock), validated on load,
direction-aware checks, ungated results named, the full run never compared with itself, asv-style timing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.gates import (
    ALPHA,
    ExpectedFormatError,
    check,
    compare_samples,
    evaluate,
    load_expected,
    mann_whitney_greater,
    update_expected,
)
from harness.metrics import Unavailable
from harness.records import ResultRecord, Timing

ROOT = Path(__file__).resolve().parents[1]
SUITES = {
    "dit": "dit-tiny",
    "flux": "flux-tiny",
    "hunyuan_video": "hunyuan-video-tiny",
    "wan": "wan-i2v-tiny",
}


def _rec(**kw) -> ResultRecord:
    base = dict(suite="flux", model="flux-tiny", scale="tiny", method="dpcache", budget=13, num_steps=50)
    base |= dict(knobs={"M": 3, "O": 2}, num_prompts=8)
    base.update(kw)
    return ResultRecord.create(**base)


SPECS = {
    "psnr": {"value": 30.0, "tol": 0.5, "better": "higher"},
    "flops_speedup": {"value": 3.85, "tol": 0.01, "better": "higher"},
    "ssim": {"value": 0.9, "tol": 0.01, "better": "higher"},
    "lpips": {"value": 0.1, "tol": 0.02, "better": "lower"},
}


def _file(tmp_path: Path, models: dict) -> Path:
    p = tmp_path / "expected.json"
    p.write_text(json.dumps({"schema": 2, "models": models}))
    return p


def test_check_passes_within_tolerance_and_is_direction_aware():
    assert check(_rec(psnr=29.6, flops_speedup=3.845, ssim=0.9, lpips=0.11), SPECS) == []
    fails = check(_rec(psnr=28.0, flops_speedup=3.9, ssim=0.9, lpips=0.2), SPECS)
    msg = {f.metric: f.message for f in fails}
    assert sorted(msg) == ["lpips", "psnr"]
    assert "measured 28" in msg["psnr"] and "expected 30" in msg["psnr"] and "tol 0.5" in msg["psnr"]
    assert "above" in msg["lpips"] and "lower is better" in msg["lpips"]


def test_expected_but_unavailable_or_missing_fails():
    rec = _rec(psnr=30.0, flops_speedup=3.85, ssim=0.9, lpips=Unavailable("torchvision is not installed"))
    fails = check(rec, SPECS)
    assert len(fails) == 1 and "unavailable (torchvision is not installed)" in fails[0].message
    fails = check(_rec(psnr=30.0, flops_speedup=3.85, ssim=0.9), SPECS)
    assert len(fails) == 1 and "not measured" in fails[0].message


def test_gates_are_keyed_by_model_so_another_scale_is_ungated_not_judged(tmp_path):
    """Old: keyed by tag alone, flux-medium was judged against flux-tiny's numbers (a false failure)."""
    path = _file(tmp_path, {"flux-tiny": {"configs": {"dpcache-K13-M3-O2": SPECS}}})
    medium = _rec(model="flux-medium", scale="medium", psnr=20.0, flops_speedup=3.0, ssim=0.5)
    verdict = evaluate(medium, path)
    assert verdict.failures == [] and not verdict.gated
    assert verdict.ungated == [
        f"no baseline for model flux-medium in {path} (bootstrap it with --update-expected)"
    ]
    tiny = evaluate(_rec(psnr=20.0, flops_speedup=3.85, ssim=0.9, lpips=0.1), path)
    assert tiny.gated and [f.metric for f in tiny.failures] == ["psnr"]
    unknown = evaluate(_rec(budget=9, psnr=1.0), path)
    assert (
        not unknown.gated
        and "no expectation for dpcache-K9-M3-O2 in the flux-tiny baseline" in unknown.ungated[0]
    )


def test_timing_is_keyed_by_device_class(tmp_path):
    wall = {"wall_speedup": {"value": 3.0, "tol": 0.3, "better": "higher", "samples": [3.0] * 7}}
    entry = {"configs": {"dpcache-K13-M3-O2": SPECS}, "timing": {"cpu": {"dpcache-K13-M3-O2": wall}}}
    path = _file(tmp_path, {"flux-tiny": entry})
    fine = dict(psnr=30.0, flops_speedup=3.85, ssim=0.9, lpips=0.1)
    slow = Timing(repeats=7, wall_speedup=[1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02])
    cpu = evaluate(_rec(**fine, wall_speedup=1.0, timing=slow), path, gate_timing=True)
    assert [f.metric for f in cpu.failures] == ["wall_speedup"]
    gpu = _rec(**fine, wall_speedup=1.0, timing=slow, device_class="cuda-nvidia-a100")
    verdict = evaluate(gpu, path, gate_timing=True)
    assert verdict.failures == [] and "device class cuda-nvidia-a100" in verdict.ungated[0]
    assert evaluate(gpu, path).ungated == []  # wall-clock not asked for: nothing to say


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s["psnr"].update(value=float("nan")), "psnr.value: must be a finite number"),
        (lambda s: s["psnr"].update(tol=float("nan")), "psnr.tol: must be a finite number"),
        (lambda s: s.pop("psnr"), "missing required metric(s) psnr"),
        (lambda s: s["ssim"].update(value="0.9"), "ssim.value: must be a finite number"),
        (lambda s: s["ssim"].update(better="up"), "ssim.better: must be 'higher' or 'lower'"),
        (lambda s: s.update(psnrr=dict(s["psnr"])), "psnrr: unknown metric"),
    ],
)
def test_damaged_expectations_are_refused_naming_the_file(tmp_path, damage, message):
    """Old: a NaN value or tol, or a removed metric, passed silently."""
    specs = json.loads(json.dumps(SPECS))
    damage(specs)
    path = tmp_path / "expected.json"
    path.write_text(
        json.dumps({"schema": 2, "models": {"flux-tiny": {"configs": {"dpcache-K13-M3-O2": specs}}}})
    )
    with pytest.raises(ExpectedFormatError) as e:
        load_expected(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value) and "\n" not in str(e.value)


def test_old_flat_format_and_bad_json_are_refused(tmp_path):
    old = tmp_path / "expected.json"
    old.write_text(json.dumps({"dpcache-K13-M3-O2": SPECS}))
    with pytest.raises(ExpectedFormatError, match="not an expectations file of schema 2"):
        load_expected(old)
    old.write_text('{"schema": 2, "models": {')
    with pytest.raises(ExpectedFormatError, match="not valid JSON"):
        load_expected(old)
    assert load_expected(tmp_path / "none.json") == {"schema": 2, "models": {}}


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_committed_expectations_are_schema_2_tiny_only_and_never_self_comparing(suite):
    data = load_expected(ROOT / "suites" / suite / "expected.json")
    assert list(data["models"]) == [SUITES[suite]]
    configs = data["models"][SUITES[suite]]["configs"]
    for tag, specs in configs.items():
        if tag.startswith("full-"):  # the reference compared with itself: 100 dB, SSIM 1, speedup 1
            assert not {"psnr", "ssim", "ms_ssim", "lpips", "flops_speedup", "wall_speedup"} & set(specs), tag


def test_update_expected_writes_under_the_model_keeps_tolerances_and_skips_self_comparison(tmp_path):
    path = _file(
        tmp_path,
        {
            "flux-tiny": {
                "configs": {
                    "dpcache-K13-M3-O2": {**SPECS, "psnr": {"value": 35.0, "tol": 0.7, "better": "higher"}}
                }
            }
        },
    )
    timed = Timing(repeats=5, wall_speedup=[2.0, 2.1, 1.9, 2.0, 2.05])
    recs = [
        _rec(
            psnr=31.25,
            flops_speedup=3.846,
            ssim=0.95,
            lpips=Unavailable("no weights"),
            wall_speedup=2.0,
            timing=timed,
        ),
        _rec(model="flux-medium", scale="medium", budget=9, psnr=25.0, flops_speedup=5.5, ssim=0.8),
        _rec(
            method="full",
            budget=50,
            knobs={},
            psnr=100.0,
            ssim=1.0,
            flops_speedup=1.0,
            adherence=1.0,
            flops=1000,
        ),
    ]
    update_expected(path, recs)
    data = load_expected(path)
    tiny = data["models"]["flux-tiny"]
    assert tiny["configs"]["dpcache-K13-M3-O2"]["psnr"] == {"value": 31.25, "tol": 0.7, "better": "higher"}
    assert tiny["configs"]["dpcache-K13-M3-O2"]["lpips"]["value"] == 0.1  # unavailable: old expectation stays
    assert "wall_speedup" not in tiny["configs"]["dpcache-K13-M3-O2"]
    assert tiny["timing"]["cpu"]["dpcache-K13-M3-O2"]["wall_speedup"]["samples"] == [2.0, 2.1, 1.9, 2.0, 2.05]
    assert tiny["configs"]["full-K50"] == {
        "adherence": {"value": 1.0, "tol": 0.02, "better": "higher"},
        "flops": {"value": 1000.0, "tol": 5.0, "better": "lower"},
    }
    assert data["models"]["flux-medium"]["configs"]["dpcache-K9-M3-O2"]["flops_speedup"]["value"] == 5.5
    assert [p.name for p in tmp_path.iterdir()] == ["expected.json"]


def test_rank_test_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    cases = [
        ([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]),
        ([1.2, 3.4, 2.2, 5.1, 0.3, 4.4], [1.1, 2.0, 0.5, 0.7, 3.0, 2.5, 0.2]),
        ([1.0, 2.0, 2.0, 3.0, 5.0], [2.0, 1.0, 1.0, 0.5, 2.0, 4.0]),  # ties: normal approximation
        ([float(i) for i in range(30, 60)], [float(i) + 0.5 for i in range(25, 55)]),
    ]
    for a, b in cases:
        ties = len(set(a + b)) < len(a + b)
        method = "asymptotic" if ties or len(a) * len(b) > 400 else "exact"
        want = stats.mannwhitneyu(a, b, alternative="greater", method=method).pvalue
        assert mann_whitney_greater(a, b) == pytest.approx(want, rel=1e-9, abs=1e-12), (a, b)


def test_timing_rule_is_asv_style_at_alpha_0_002():
    assert ALPHA == 0.002
    base = [1.00, 1.02, 0.98, 1.01, 0.99, 1.00, 1.01]
    slower = [1.30, 1.32, 1.29, 1.31, 1.33, 1.30, 1.34]
    assert compare_samples(base, slower, better="lower").regressed
    assert not compare_samples(base, [0.6, 1.5, 0.7, 1.4, 1.0, 1.6, 0.5], better="lower").regressed
    assert not compare_samples(base, [1.03] * 7, better="lower").regressed  # significant but below factor
    # 5 against 5 can never reach p < 0.002 (the smallest p is 1/252): not a regression by the rank test
    five = compare_samples(base[:5], slower[:5], better="lower")
    assert not five.regressed and math.isclose(five.p_value, 1 / 252)


def test_timing_gate_reports_samples_too_few_for_significance():
    specs = {
        "wall_speedup": {"value": 3.0, "tol": 0.3, "better": "higher", "samples": [3.0, 3.1, 2.9, 3.05, 2.95]}
    }
    slow = _rec(wall_speedup=2.0, timing=Timing(repeats=5, wall_speedup=[2.0, 2.1, 1.9, 2.05, 1.95]))
    assert check(slow, specs) == []  # timing only when asked
    fails = check(slow, specs, gate_timing=True)
    assert len(fails) == 1 and "can never reach significance 0.002" in fails[0].message
