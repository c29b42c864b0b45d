"""Report and BENCHMARKS.md verdicts: unmatched compute marked and never ranked at K, each method's quality
at exactly K interpolated between its bracketing settings, configurations that did not run, caveats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.records import ResultRecord
from harness.report import build_report
from harness.report.data import at_k, leaders, load_records
from harness.report.md import benchmarks_markdown

INV = "20260301T000000-verdicts"


def _rec(method: str, budget: int, measured_k: float, psnr: float, **kw) -> ResultRecord:
    return ResultRecord.create(
        suite="bench", model="dit-tiny", scale="tiny", method=method, budget=budget, num_steps=50,
        measured_k=measured_k, psnr=psnr, ssim=0.9, flops_speedup=50 / measured_k, prompts=["0", "1"],
        cache_hits=[] if method in ("full", "fewer-steps") else [10, 10], **kw,
    )  # fmt: skip


def _write(tmp_path: Path) -> Path:
    recs = [
        _rec("full", 50, 50.0, 100.0),
        _rec("fewer-steps", 25, 25.0, 40.0),
        _rec("fewer-steps", 13, 13.0, 31.7),
        _rec("teacache", 25, 24.0, 35.0),
        _rec("teacache", 13, 15.6, 22.0),  # 20 % over K: unmatched
        _rec("teacache", 9, 8.4, 18.9),
    ]
    fbc = _rec("firstblockcache", 13, 13.2, 14.0)
    fbc.outcome.caveats.append("firstblockcache K=13: saturated: only its probe (the first block) still runs")
    gone = ResultRecord.create(suite="bench", model="dit-tiny", scale="tiny", method="dpcache", budget=9,
                               num_steps=50)  # fmt: skip
    gone.outcome.status, gone.outcome.reason = "not_run", "dpcache cannot plan K=9 at T=50"
    gone.speed.compute_floor_k = 11.0
    path = tmp_path / "results.jsonl"
    path.write_text(
        "".join(json.dumps({"invocation": INV, **r.to_dict()}) + "\n" for r in [*recs, fbc, gone])
    )
    return path


def test_at_k_interpolates_between_the_bracketing_settings():
    assert at_k([(8.4, 18.9), (15.6, 22.0), (24.0, 35.0)], 13) == pytest.approx(
        (
            18.9 + (22.0 - 18.9) * (13 - 8.4) / (15.6 - 8.4),
            "interpolated between measured K=8.40 and K=15.60",
        ),
    )
    assert at_k([(13.0, 31.7), (25.0, 40.0)], 13) == (31.7, "measured at K")
    value, how = at_k([(13.2, 14.0)], 13)
    assert value is None and how == "no measured setting below K=13 to bracket it"


def test_rankings_never_rank_an_unmatched_point_at_k(tmp_path):
    """Old: TeaCache's "K=13" measured K=15.6 on the evaluation prompts and was ranked next to K=13 rows."""
    runs = load_records(_write(tmp_path))
    rows = leaders(runs[INV])[13]
    tea = next(r for r in rows if r["method"] == "teacache")
    assert tea["raw"]["matched"] is False and tea["value"] == pytest.approx(20.88, abs=0.01)  # interpolated
    assert [r["method"] for r in rows if r["value"] is not None] == ["fewer-steps", "teacache"]
    fbc = next(r for r in rows if r["method"] == "firstblockcache")
    assert fbc["value"] is None and "no measured setting below" in fbc["how"]


def test_benchmarks_md_marks_unmatched_ranks_at_k_and_lists_what_did_not_run(tmp_path):
    """Old: the table ranked unmatched rows at K, dropped configurations that could not run without a line
    and showed FirstBlockCache's saturated K=13 without a caveat."""
    md = benchmarks_markdown(_write(tmp_path), now=0)
    assert "| teacache | 13 (measured 15.6: UNMATCHED) |" in md
    assert (
        "| 13 | 2 | teacache | 20.88 | interpolated between measured K=8.40 and K=15.60 | 22.00 at measured K=15.60 UNMATCHED |"
        in md
    )
    assert (
        "**Did not run**" in md
        and "- dpcache K=9 (measured floor K=11.00): dpcache cannot plan K=9 at T=50" in md
    )
    assert "**Caveats:**" in md and "firstblockcache K=13: saturated" in md


def test_html_report_marks_unmatched_and_lists_what_did_not_run(tmp_path):
    page = build_report(_write(tmp_path), tmp_path / "out", invocation=INV).read_text()
    assert "15.6 UNMATCHED" in page and "Ranking at exactly K" in page
    assert "Did not run" in page and "dpcache K=9 (measured floor K=11.00)" in page
    assert "firstblockcache K=13: saturated" in page
