"""The report's figures on synthetic records: per-prompt spread on the speed-quality plot, difference maps in
the image grids, the chosen K on the cost curve."""

from __future__ import annotations

from typing import Any

import pytest
from report_synth import make_run, record

import harness.report.plots as plots
from harness.report import build_report
from harness.report.data import read_cost_curve, write_cost_curve


@pytest.fixture
def figures(monkeypatch) -> list[Any]:
    """Every figure the report module closes (kept open for inspection)."""
    import matplotlib.pyplot as plt

    kept: list[Any] = []
    real = plots._plt

    class _Plt:
        def __getattr__(self, name: str) -> Any:
            return getattr(plt, name)

        def close(self, fig: Any = None) -> None:
            kept.append(fig)

    monkeypatch.setattr(plots, "_plt", lambda: (real(), _Plt())[1])
    yield kept
    for f in kept:
        plt.close(f)


def test_speed_quality_points_carry_the_per_prompt_min_max(tmp_path, figures):
    from matplotlib.container import ErrorbarContainer

    recs = [
        record("m", "dpcache", 10, 30.0, 2.0, per_prompt={"psnr": [28.0, 30.0, 33.0]}),
        record("m", "fora", 10, 29.0, 2.1, per_prompt={"psnr": [29.0]}),  # one value: no bar
    ]
    assert plots.speedup_quality_plot(recs, tmp_path / "p.png") is not None
    (fig,) = figures
    for ax in fig.axes[:2]:  # FLOPs and wall-clock panels
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 1
        (segments,) = [lc.get_segments() for lc in bars[0].lines[2]]
        (seg,) = segments
        assert seg[0][1] == pytest.approx(28.0) and seg[1][1] == pytest.approx(33.0)


def test_report_caption_says_what_the_error_bars_are(tmp_path):
    src, _ = make_run(tmp_path)
    text = build_report(src, tmp_path / "out").read_text()
    flux = text.split('<section id="wan-tiny">')[0]
    assert "Error bars: min–max of the per-prompt PSNR over the 3 evaluation prompts" in flux


def test_image_grid_shows_amplified_difference_maps_beside_each_method(tmp_path):
    import numpy as np
    from PIL import Image

    src, art = make_run(tmp_path)
    page = build_report(src, tmp_path / "out")
    flux = page.read_text().split('<section id="wan-tiny">')[0]
    assert "|method − reference| × 8 per pixel (black: equal, white: off by 32/255 or more)" in flux
    diff = page.parent / "flux-tiny/diff/dpcache-K10-M3-O2/prompt00.png"
    assert 'src="flux-tiny/diff/dpcache-K10-M3-O2/prompt00.png"' in flux and diff.is_file()
    assert 'alt="|dpcache − reference| × 8, prompt 0"' in flux
    assert "flux-tiny/diff/full" not in flux  # the reference has no map of its own
    run = art / "20260102T030405-abcdef12" / "flux-tiny"
    a = np.asarray(Image.open(run / "dpcache-K10-M3-O2/prompt00.png").convert("RGB"), dtype=int)
    b = np.asarray(Image.open(run / "full-K20/prompt00.png").convert("RGB"), dtype=int)
    want = np.clip(np.abs(a - b).max(axis=-1) * 8, 0, 255)
    got = np.asarray(Image.open(diff), dtype=int)
    assert got.shape == want.shape and (got == want).all() and got.max() == 255 and got.min() == 0
    wan = page.read_text().split('<section id="wan-tiny">')[1]
    assert wan.count('src="wan-tiny/diff/dpcache-K10-M3-O2/prompt00_f') == 3  # frame by frame


def _cost_curve(tmp_path):
    import numpy as np

    rng = np.random.default_rng(3)
    t = 12
    cost = rng.random((t, t + 1, t + 1)) * 10 + 0.1  # C[a, i, j], as the planner reads it
    path = write_cost_curve(cost, tmp_path / "cost_curve.json", {"first_full_steps": 2})
    return cost, read_cost_curve(path)


def test_cost_curve_data_is_the_planner_path_cost_per_k(tmp_path):
    from dpcache.planner import plan_all_budgets

    cost, curve = _cost_curve(tmp_path)
    want = plan_all_budgets(cost, first_full_steps=2, solver="exact")
    assert curve["exact"] == [(k, pytest.approx(s.path_cost)) for k, s in sorted(want.items())]
    assert read_cost_curve(tmp_path / "absent.json") is None


def test_cost_curve_marks_the_chosen_k(tmp_path, figures):
    _, curve = _cost_curve(tmp_path)
    exact = dict(curve["exact"])
    assert plots.cost_curve_plot(curve, [6, 10, 6], tmp_path / "c.png") is not None
    (fig,) = figures
    ax = fig.axes[0]
    rings = [tuple(p) for c in ax.collections for p in c.get_offsets()]
    assert rings == [(6, pytest.approx(exact[6])), (10, pytest.approx(exact[10]))]
    vlines = sorted(ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == ":")
    assert vlines == [6, 10]
    assert {t.get_text() for t in ax.texts} == {
        f"chosen K=6\n{exact[6]:.3g}",
        f"chosen K=10\n{exact[10]:.3g}",
    }


def test_report_draws_the_cost_curve_with_this_runs_dpcache_budgets(tmp_path):
    import shutil

    src, art = make_run(tmp_path)
    text = build_report(src, tmp_path / "out").read_text().split('<section id="wan-tiny">')[0]
    assert "chosen K not marked on the cost curve: no readable cost_curve.json" in text
    _cost_curve(tmp_path)
    shutil.copy(
        tmp_path / "cost_curve.json", art / "20260102T030405-abcdef12" / "flux-tiny" / "cost_curve.json"
    )
    page = build_report(src, tmp_path / "out2")
    flux = page.read_text().split('<section id="wan-tiny">')[0]
    assert 'src="flux-tiny/cost_curve.png"' in flux and (page.parent / "flux-tiny/cost_curve.png").is_file()
    assert (
        "in this run marked (dotted line, ringed point on the exact solver&#x27;s curve): K=6, K=10." in flux
    )
