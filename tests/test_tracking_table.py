"""The end-of-session results table: one row per gated record with Δ to expected.json, and the pytest hook."""

from __future__ import annotations

import json

from harness.plugin_table import format_rows, result_row
from harness.records import ResultRecord

pytest_plugins = ["pytester"]


def _rec(budget=13, psnr=40.0):
    return ResultRecord.create(
        suite="flux",
        model="flux-tiny",
        scale="tiny",
        method="dpcache",
        budget=budget,
        num_steps=50,
        num_prompts=2,
        knobs={"M": 3, "O": 2},
        flops_speedup=3.7,
        psnr=psnr,
        measured_k=13.0,
        device="cpu",
    )


def _expected(tmp_path):
    path = tmp_path / "expected.json"
    spec = {
        "flops_speedup": {"better": "higher", "tol": 0.01, "value": 3.75},
        "psnr": {"better": "higher", "tol": 0.5, "value": 41.5},
        "ssim": {"better": "higher", "tol": 0.01, "value": 0.99},
    }
    path.write_text(
        json.dumps({"schema": 2, "models": {"flux-tiny": {"configs": {"dpcache-K13-M3-O2": spec}}}})
    )
    return path


def test_result_row_deltas_and_table(tmp_path):
    row = result_row(_rec(), _expected(tmp_path))
    assert round(row["delta"]["flops_speedup"], 3) == -0.05 and round(row["delta"]["psnr"], 2) == -1.5
    no_base = result_row(_rec(budget=9), _expected(tmp_path))
    assert no_base["delta"] == {}
    lines = format_rows([no_base, row])
    assert lines[0].split()[:6] == ["model", "method", "K", "FLOPs", "x", "wall"]
    assert lines[2].split() == [
        "flux-tiny",
        "dpcache",
        "13",
        "3.70",
        "-",
        "40.00",
        "13.00",
        "-0.050",
        "-1.50",
    ]
    assert lines[3].split()[:3] == ["flux-tiny", "dpcache", "9"] and lines[3].split()[-2:] == ["-", "-"]


def test_session_ends_with_the_results_table(pytester, tmp_path):
    exp = _expected(tmp_path)
    pytester.makeconftest("pytest_plugins = ['harness.plugin_table']")
    pytester.makepyfile(
        f"""
        import sys
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from test_tracking_table import _rec
        from harness.plugin_table import ROW_KEY, result_row
        from pathlib import Path

        def test_a(request):
            request.node.user_properties.append((ROW_KEY, result_row(_rec(), Path({str(exp)!r}))))
        """
    )
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly")
    res.stdout.fnmatch_lines(
        [
            "*dpcache results*",
            "flux-tiny*dpcache*13*3.70*40.00*-0.050*-1.50",
            "1 result(s) over 1 model(s); 1 test(s) passed, 0 failed*",
        ]
    )
