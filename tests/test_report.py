"""The HTML report (run page layout, links, sections, table) and reports/BENCHMARKS.md, on synthetic data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from report_synth import INVOCATION, LPIPS_WHY, PSNR_WHY, make_run, record

from harness.cli import main
from harness.report import build_report
from harness.report.data import latest_per_config, pareto_front
from harness.report.md import benchmarks_markdown, write_benchmarks_md


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    src, _ = make_run(root)
    page = build_report(src, root / "out")
    return root, page


def test_pareto_front_keeps_non_dominated_points_by_increasing_speedup():
    pts = [(2.0, 40.0), (2.0, 35.0), (3.0, 38.0), (4.0, 30.0), (3.5, 25.0), (1.5, 39.0)]
    assert pareto_front(pts) == [0, 2, 3]
    assert pareto_front([]) == []


def test_latest_per_config_keeps_the_last_duplicate():
    a, b = record("m", "dpcache", 10, 30.0, 2.0), record("m", "dpcache", 10, 31.0, 2.0)
    assert latest_per_config([a, record("m", "full", 20, None, 1.0), b])[1] is b


def test_run_page_is_self_contained_html5(report):
    root, page = report
    out = root / "out"
    assert page == out / INVOCATION / "index.html"
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in text and 'name="viewport"' in text and '<html lang="en">' in text
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) > 20
    for s in srcs:  # relative links to files next to the page
        assert not s.startswith(("/", "file:", "http")) and ".." not in s
        assert (page.parent / s).is_file(), s
    index = (out / "index.html").read_text()
    assert f'href="{INVOCATION}/index.html"' in index and "flux-tiny, wan-tiny" in index
    assert json.loads((page.parent / "run.json").read_text())["records"] == 11


def test_run_page_sections(report):
    _, page = report
    text = page.read_text()
    flux, wan = text.split('<section id="wan-tiny">')
    for needle in ("flux-tiny/speedup_quality.png", "flux-tiny/schedules.png", "flux-tiny/cost_tensor.png"):
        assert needle in flux
    assert "Pareto front" in flux
    assert (
        "teacache-K10: no PSNR (reference missing for this config)" in flux
    )  # left out of the plot, with why
    assert "cost-tensor heatmap not available" in wan and 'wan-tiny/cost_tensor.png"' not in wan
    # image grids: one per budget, reference first, then every method at that budget
    grids = re.findall(r"<h4>K = (\d+)</h4>.*?<thead><tr>(.*?)</tr>", flux)
    heads = {k: re.findall(r"<th>(.*?)</th>", h) for k, h in grids}
    assert heads == {
        "10": ["reference (full, K=20)", "dpcache", "fewer-steps", "fora", "teacache"],
        "6": ["reference (full, K=20)", "dpcache", "fewer-steps", "fora"],
    }
    assert "38.0 dB" in flux  # per-prompt PSNR under the image
    assert 'title="no image saved">n/a' in flux  # teacache saved no images
    assert "frames of each clip" in wan and 'class="frames"' in wan  # video frames as a strip


def test_table_formats_numbers_and_explains_unavailable_metrics(report):
    _, page = report
    table = page.read_text().split("<h3>Results</h3>")[1].split("</section>")[0]
    assert "1.95×" in table and "38.00" in table and "ref" in table and "0.8800" in table
    assert f'class="na" title="{LPIPS_WHY}">n/a' in table
    assert f'class="na" title="{PSNR_WHY}">n/a' in table
    assert 'class="strip"' in table and "computed steps (10/20): 0, 1, 2, 4" in table


def test_run_without_images_says_so(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps(record("flux-tiny", "full", 20, None, 1.0)) + "\n")
    text = build_report(src, tmp_path / "out").read_text()
    assert "nothing to plot" in text and "no per-prompt images saved" in text
    assert (
        "cost-tensor heatmap not available" in text and "no record of this model has a step schedule" in text
    )


def test_video_model_grid_shows_the_saved_middle_frame(tmp_path):
    from PIL import Image

    recs = [record("wan-tiny", "full", 20, None, 1.0), record("wan-tiny", "dpcache", 10, 35.0, 1.9)]
    src = tmp_path / "r.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    for r in recs:  # what BenchSession._save_images writes for a (N, F, C, H, W) video: the middle frame
        d = tmp_path / "art" / INVOCATION / "wan-tiny" / r["config_tag"]
        d.mkdir(parents=True)
        Image.new("L", (8, 8), 128).save(d / "prompt00.png")
    text = build_report(src, tmp_path / "out", artifacts_root=tmp_path / "art").read_text()
    assert "middle frame of each clip" in text and 'class="frames"' not in text
    assert text.count('<img src="wan-tiny/img/') == 2


def test_benchmarks_md_uses_latest_tiny_run_per_model(tmp_path):
    old = {**record("flux-tiny", "dpcache", 10, 20.0, 1.5), "invocation": "20250101T000000-old"}
    full_scale = {**record("flux-dev", "dpcache", 10, 20.0, 1.5), "scale": "full"}
    suite_only = {
        **record("dit-tiny", "dpcache", 10, 20.0, 1.5),
        "suite": "dit",
        "invocation": "20270101T0-dit",
    }
    suite_newer = {
        **record("flux-tiny", "dpcache", 10, 20.0, 1.5),
        "suite": "flux",
        "invocation": "20270101T0-flux",
    }
    src = tmp_path / "r.jsonl"
    make_run(tmp_path)
    lines = [json.dumps(old), *(tmp_path / "results.jsonl").read_text().splitlines()]
    lines += [json.dumps(r) for r in (full_scale, suite_only, suite_newer)]
    src.write_text("\n".join(lines) + "\n")
    md = benchmarks_markdown(
        src, command="dpcache-bench report --json-in r.jsonl --benchmarks-md B.md", now=0
    )
    assert md.startswith("# Benchmarks (tiny scale)")
    assert (
        "dpcache-bench report --json-in r.jsonl --benchmarks-md B.md" in md and "Generated 1970-01-01" in md
    )
    assert "logical cores" in md
    assert "## flux-tiny" in md and "## wan-tiny" in md and "flux-dev" not in md
    assert INVOCATION in md and "20250101T000000-old" not in md
    assert "20270101T0-flux" not in md  # a `dpcache-bench run` beats a newer suite run of the same model
    assert "## dit-tiny" in md and "20270101T0-dit" in md  # a model with suite runs only
    flux = md.split("## flux-tiny")[1].split("## wan-tiny")[0]
    assert "| method | K | FLOPs × | wall × | PSNR (dB) | SSIM | adherence |" in flux
    assert "| full | 20 | 1.00× | 1.00× | ref | 1.0000 | 0.67 |" in flux
    assert "| dpcache | 10 (measured 10.2) | 1.95× | 1.56× | 38.00 | 0.8800 | 0.67 |" in flux
    assert "| teacache | 10 (measured 10.2) | 1.90× | 1.52× | n/a[1] |" in flux and f"[1] {PSNR_WHY}" in flux
    rows = [
        line.split(" | ")[0:2] for line in flux.splitlines() if line.startswith("| ") and "method" not in line
    ]
    assert rows[0] == ["| full", "20"] and rows[1] == [
        "| dpcache",
        "10 (measured 10.2)",
    ]  # full, then K desc.
    with pytest.raises(ValueError, match="no tiny-scale records"):
        benchmarks_markdown(src, invocation="nope")


def test_benchmarks_md_write_is_atomic(tmp_path, monkeypatch):
    src, _ = make_run(tmp_path)
    out = tmp_path / "reports" / "BENCHMARKS.md"
    write_benchmarks_md(src, out)
    first = out.read_text()
    assert "## flux-tiny" in first

    def boom(*_args):
        raise OSError("disk full")

    monkeypatch.setattr("dpcache.atomic_io.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_benchmarks_md(src, out)
    assert out.read_text() == first  # the old table is intact
    assert [p.name for p in out.parent.iterdir()] == ["BENCHMARKS.md"]  # no temp file left behind


def test_cli_report_writes_html_and_benchmarks_md(tmp_path, monkeypatch, capsys):
    make_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--json-in", "results.jsonl", "--out", "rep", "--benchmarks-md", "B.md"]) == 0
    out = capsys.readouterr().out
    assert f"rep/{INVOCATION}/index.html" in out and "B.md" in out
    assert (
        "dpcache-bench report --json-in results.jsonl --benchmarks-md B.md" in (tmp_path / "B.md").read_text()
    )
    assert main(["report", "--json-in", "results.jsonl", "--out", "rep", "--invocation", "nope"]) == 2
    assert "no records of invocation 'nope'" in capsys.readouterr().err


def test_report_modules_import_no_heavy_libraries():
    code = (
        "import sys, harness.report, harness.report.md, harness.cli; "
        "print([m for m in ('torch', 'matplotlib', 'PIL', 'numpy', 'mlflow') if m in sys.modules])"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
