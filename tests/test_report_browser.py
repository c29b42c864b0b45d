"""The HTML report in a real browser: headless Chromium loads every image and draws the charts at 1280 px."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from report_synth import INVOCATION, make_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1280, 2000
# Appended to a copy of the page (same folder, so the same relative links): where each figure landed.
PROBE = """<script>window.addEventListener("load", function () {
  var r = Array.prototype.map.call(document.querySelectorAll("figure img"), function (im) {
    var b = im.getBoundingClientRect();
    return {src: im.getAttribute("src"), x: b.left, y: b.top, w: b.width, h: b.height};
  });
  document.body.dataset.figures = JSON.stringify(r);
});</script>"""


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


@pytest.fixture(scope="module")
def browser() -> str:
    exe = find_browser()
    if exe is None:
        why = (
            f"no headless Chromium ({', '.join(BROWSERS)}) on PATH; install Debian's `chromium` (see .ci/run)"
        )
        if os.environ.get("DPCACHE_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return exe


def _chromium(exe: str, page: Path, profile: Path, *args: str) -> str:
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
        "--virtual-time-budget=10000",
        *args,
        page.resolve().as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}: {res.stderr[-2000:]}"
    return res.stdout


def render(exe: str, page: Path, work: Path) -> dict[str, Any]:
    """Load `page` in headless Chromium: the page's own image check (`<body data-imgs-*>`), the figures'
    boxes, the page width, and a 1280×2000 screenshot."""
    from PIL import Image

    work.mkdir(parents=True, exist_ok=True)
    probe = page.with_name("_probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "\n</body>"))
    try:
        dom = _chromium(exe, probe, work / "profile", "--dump-dom")
    finally:
        probe.unlink()
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = {k: html.unescape(v) for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', body[1])}
    shot = work / "screenshot.png"
    _chromium(exe, page, work / "profile", f"--screenshot={shot}")
    figures = json.loads(attrs.get("figures", "[]"))
    return {"attrs": attrs, "figures": figures, "screenshot": Image.open(shot).convert("RGB"), "path": shot}


def assert_renders(result: dict[str, Any], page: Path) -> None:
    """Every <img> loaded, nothing overflows 1280 px, and the screenshot shows the charts."""
    import numpy as np

    attrs = result["attrs"]
    n_img = len(re.findall(r"<img ", page.read_text()))
    assert attrs.get("imgs-total") == str(n_img) and n_img > 0, attrs
    assert attrs.get("imgs-ok") == "true", f"images failed to load: {attrs.get('imgs-broken')}"
    assert int(attrs["scroll-width"]) <= WIDTH, f"page is {attrs['scroll-width']} px wide at {WIDTH} px"
    shot = result["screenshot"]
    assert shot.size == (WIDTH, HEIGHT)
    px = np.asarray(shot).reshape(-1, 3)
    assert len(np.unique(px, axis=0)) > 300, "screenshot looks blank"
    # the figures on the first screen (the speedup-quality chart first) are drawn: large, coloured boxes
    on_screen = [f for f in result["figures"] if f["y"] + f["h"] <= HEIGHT]
    assert on_screen and on_screen[0]["src"].endswith("speedup_quality.png"), result["figures"]
    for f in on_screen:
        assert f["w"] > 150 and f["h"] > 60, f"figure {f['src']} did not render: {f}"
        box = np.asarray(shot.crop((int(f["x"]), int(f["y"]), int(f["x"] + f["w"]), int(f["y"] + f["h"]))))
        box = box.reshape(-1, 3).astype(int)
        ink = (box.min(axis=1) < 230).mean()
        saturated = ((box.max(axis=1) - box.min(axis=1)) > 80).sum()
        assert ink > 0.02 and saturated > 200, (
            f"figure {f['src']} looks empty (ink {ink:.3f}, {saturated} px)"
        )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from harness.report import build_report

    root = tmp_path_factory.mktemp("browser")
    src, _ = make_run(root)
    return build_report(src, root / "out")


def test_report_renders_in_headless_chromium(browser, report, tmp_path):
    result = render(browser, report, tmp_path)
    assert_renders(result, report)
    kept = Path(os.environ.get("DPCACHE_REPORT_SCREENSHOT", tmp_path / "kept.png"))
    shutil.copyfile(result["path"], kept)  # DPCACHE_REPORT_SCREENSHOT=path keeps it for a look
    index = report.parent.parent / "index.html"
    dom = _chromium(browser, index, tmp_path / "profile", "--dump-dom")
    assert 'data-imgs-ok="true"' in dom and f'href="{INVOCATION}/index.html"' in dom


def test_broken_image_link_fails_the_check(browser, report, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(report.parent, broken)
    (broken / "flux-tiny" / "speedup_quality.png").unlink()
    (broken / "flux-tiny" / "img" / "dpcache-K6-M3-O2" / "prompt01.png").unlink()
    page = broken / "index.html"
    result = render(browser, page, tmp_path / "work")
    assert result["attrs"]["imgs-ok"] == "false"
    assert set(result["attrs"]["imgs-broken"].split()) == {
        "flux-tiny/speedup_quality.png",
        "flux-tiny/img/dpcache-K6-M3-O2/prompt01.png",
    }
    with pytest.raises(AssertionError, match="images failed to load"):
        assert_renders(result, page)
    # the screenshot check alone catches the missing chart too
    result["attrs"]["imgs-ok"] = "true"
    with pytest.raises(AssertionError, match=r"speedup_quality\.png"):
        assert_renders(result, page)
