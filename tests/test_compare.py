"""`dpcache-bench compare RUN_A RUN_B`: the side-by-side table with ratios and marks, and its HTML."""

from __future__ import annotations

from harness.records import ResultRecord
from harness.tracking import Tracker


def _log(path, inv, psnr, flops, budget=9):
    rec = ResultRecord.create(
        suite="flux",
        model="flux-tiny",
        scale="tiny",
        method="dpcache",
        budget=budget,
        num_steps=20,
        num_prompts=2,
        flops_speedup=flops,
        psnr=psnr,
        device="cpu",
    )
    Tracker(path, mlflow_uri="off", invocation_id=inv).log(rec)


def test_compare_prints_the_table_and_writes_html(tmp_path, capsys):
    from harness.cli import main

    path = tmp_path / "r.jsonl"
    _log(path, "20261101T000000-aaaa", 31.0, 2.2)
    _log(path, "20261101T000000-aaaa", 28.0, 3.0, budget=7)
    _log(path, "20261102T000000-bbbb", 27.0, 2.21)  # PSNR 13 % worse, FLOPs within 5 %
    html = tmp_path / "cmp.html"
    rc = main(["compare", "aaaa", "bbbb", "--json-in", str(path), "--html", str(html), "--fail-worse"])
    out = capsys.readouterr().out
    assert rc == 1
    lines = out.splitlines()
    assert lines[0] == "A = 20261101T000000-aaaa" and lines[1] == "B = 20261102T000000-bbbb"
    psnr = next(ln for ln in lines if "dpcache-K9" in ln and ln.endswith(" psnr"))
    assert psnr.startswith("!") and "0.871" in psnr
    flops = next(ln for ln in lines if "dpcache-K9" in ln and ln.endswith("flops_speedup"))
    assert flops.startswith(" ") and "1.005" in flops
    assert any(ln.startswith("x") and "dpcache-K7" in ln for ln in lines)
    assert "1 significantly worse (!)" in out
    page = html.read_text()
    assert "<table" in page and "dpcache-K9" in page and "0.871" in page


def test_compare_unknown_run_is_one_line(tmp_path, capsys):
    from harness.cli import main

    path = tmp_path / "r.jsonl"
    _log(path, "20261101T000000-aaaa", 31.0, 2.2)
    assert main(["compare", "aaaa", "zzzz", "--json-in", str(path), "--html", str(tmp_path / "c.html")]) == 2
    assert "'zzzz' matches no run" in capsys.readouterr().err
