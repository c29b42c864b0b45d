"""History: the step detector finds injected level changes (and not noise); `dpcache-bench history` names
the run where a step starts, from stored JSON lines, and fails on a recent regression."""

from __future__ import annotations

import random

from harness.history import build_series, detect_steps, points_from_jsonl
from harness.records import ResultRecord
from harness.tracking import Tracker


def test_detect_steps_finds_an_injected_step_and_ignores_noise():
    rng = random.Random(0)
    flat = [30.0 + rng.gauss(0, 0.05) for _ in range(20)]
    assert detect_steps(flat) == []
    stepped = flat[:12] + [v - 0.6 for v in flat[12:]]  # a drift below a 1 dB tolerance
    assert detect_steps(stepped) == [12]
    two = [1.0] * 6 + [2.0] * 6 + [1.5] * 6
    assert detect_steps(two) == [6, 12]
    assert detect_steps([5.0, 5.0]) == []


def _write_runs(path, psnrs):
    for n, psnr in enumerate(psnrs):
        rec = ResultRecord.create(
            suite="flux",
            model="flux-tiny",
            scale="tiny",
            method="dpcache",
            budget=9,
            num_steps=20,
            num_prompts=2,
            flops_speedup=2.2,
            psnr=psnr,
            device="cpu",
        )
        Tracker(path, mlflow_uri="off", invocation_id=f"20261101T{n:02d}0000-night{n:02d}").log(rec)


def test_history_names_the_run_where_a_step_starts(tmp_path, capsys):
    from harness.cli import main

    path = tmp_path / "results.jsonl"
    rng = random.Random(1)
    _write_runs(
        path, [31.0 + rng.gauss(0, 0.03) for _ in range(7)] + [30.4 + rng.gauss(0, 0.03) for _ in range(3)]
    )
    series = {s.metric: s for s in build_series(points_from_jsonl([path]))}
    assert [st.invocation for st in series["psnr"].steps] == ["20261101T070000-night07"]
    assert series["psnr"].steps[0].regression("psnr") and series["flops_speedup"].steps == []
    rc = main(["history", "--json-in", str(path), "--out", str(tmp_path / "hist"), "--recent", "3"])
    out = capsys.readouterr().out
    assert rc == 1, out  # a regression step in the last 3 runs
    assert "psnr: REGRESSION step starting at run 20261101T070000-night07" in out
    assert (tmp_path / "hist" / "index.html").is_file() and list((tmp_path / "hist").glob("series-*.png"))
    assert main(["history", "--json-in", str(path), "--recent", "1"]) == 0  # started 3 runs ago


def test_history_refuses_a_missing_file(tmp_path, capsys):
    from harness.cli import main

    assert main(["history", "--json-in", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_the_report_has_a_history_page_naming_the_step(tmp_path):
    from harness.report import build_report

    path = tmp_path / "results.jsonl"
    rng = random.Random(2)
    _write_runs(
        path, [31.0 + rng.gauss(0, 0.03) for _ in range(6)] + [30.4 + rng.gauss(0, 0.03) for _ in range(4)]
    )
    build_report(path, tmp_path / "rep")
    index = (tmp_path / "rep" / "index.html").read_text()
    assert 'href="history/index.html"' in index and "1 step change(s)" in index
    page = (tmp_path / "rep" / "history" / "index.html").read_text()
    assert "psnr: REGRESSION step starting at run 20261101T060000-night06" in page
    one = tmp_path / "one.jsonl"
    _write_runs(one, [31.0])
    build_report(one, tmp_path / "rep1")  # a single run: no history to draw, no link
    assert "history/index.html" not in (tmp_path / "rep1" / "index.html").read_text()
