"""More wan-tiny fidelity checks: MagCache (Zehong-Ma/MagCache's Wan2.1 forward) and FORA (TaylorSeer-Wan2.1 at
order 0) against our ports, and why ToCa has no Wan check (T = 10, quick).

The authors' repositories are never downloaded here: set `DPCACHE_WAN_SRC` (Wan-Video/Wan2.1) and
`DPCACHE_AUTHORS_MIRROR` (a directory of `owner+name/repo` git dirs, as `fetch` leaves them; default
/work/.mirror) or those tests skip, saying which source is missing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def _source(owner_name: str, repo: str):
    from benchmarks.fidelity.common import AuthorsSource

    root = Path(os.environ.get("DPCACHE_AUTHORS_MIRROR", "/work/.mirror")) / owner_name / "repo"
    if not (root / "HEAD").is_file():
        pytest.skip(f"{repo} not fetched at {root} (set DPCACHE_AUTHORS_MIRROR)")
    return AuthorsSource(root, repo)


def _needs_wan(src) -> None:
    from benchmarks.fidelity.common import AuthorsSourceMissing
    from benchmarks.fidelity.wan_official import wan_source

    try:
        wan_source(src)
    except AuthorsSourceMissing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def wan_tiny():
    from benchmarks.fidelity.common import load_model

    return load_model("wan-tiny")


def test_magcache_runs_the_authors_wan_setting(wan_tiny):
    """Wan: K = 4, R = 0.2 (their T2V-1.3B command); at a saturating threshold (T = 10) both CFG branches compute
    the 2 retention steps, then one step after every 4 skips."""
    from baselines.base import get_method
    from baselines.magcache import FAMILY_DEFAULTS
    from benchmarks.fidelity.common import traced

    assert FAMILY_DEFAULTS["wan"] == (4, 0.2)
    method = get_method("magcache")
    ratios = {"mag_ratios": [1.0] + [0.99] * 9}

    def run():
        method.apply(wan_tiny.pipe, 1e3, 10, ratios)
        try:
            return wan_tiny.sample(wan_tiny.spec.evaluation_prompts[0], 0, 10)
        finally:
            method.remove(wan_tiny.pipe)

    _, trace = traced(wan_tiny, run)
    assert trace.steps(2, 0) == trace.steps(2, 1) == [0, 1, 6]


def test_authors_magcache_wan_matches_our_port(wan_tiny):
    """Fed the same ratios: same computed steps (both branches), frames within 1e-4, the knob skips; their
    calibration equals diffusers' to their 5-decimal rounding; their own per-branch ratios are tagged deliberate."""
    from benchmarks.fidelity import magcache_wan

    src = _source("Zehong-Ma+MagCache", magcache_wan.REPO)
    _needs_wan(src)
    prompt = wan_tiny.spec.evaluation_prompts[0]
    rows = magcache_wan.compare(src, wan_tiny, 10, [0.12], [prompt], [0])
    same, own = rows
    assert same.extra["setting"] == "same-ratios" and "deliberate" not in same.extra
    assert len(same.steps_ours) < 10
    assert same.steps_equal and same.extra["steps_ours_uncond"] == same.extra["steps_theirs_uncond"]
    assert same.max_abs < 1e-4
    assert same.extra["calibration_ratio_max_abs"] < 1e-5
    assert own.extra["setting"] == "own-calibration" and own.extra["deliberate"]


def test_authors_fora_wan_matches_our_port(wan_tiny):
    """TaylorSeer-Wan2.1's forwards at order 0 / first_enhance 1 (FORA's rule) vs our FORA: same steps, < 1e-4."""
    from benchmarks.fidelity import fora_wan

    src = _source("Shenyi-Z+TaylorSeer", fora_wan.REPO)
    (row,) = fora_wan.compare(src, wan_tiny, 10, [3.0], [wan_tiny.spec.evaluation_prompts[0]], [0])
    assert row.steps_ours == [0, 3, 6, 9]
    assert row.steps_equal and row.extra["steps_ours_uncond"] == row.extra["steps_theirs_uncond"]
    assert row.max_abs < 1e-4


def test_no_authors_toca_or_fora_mode_for_wan():
    """Why there is no ToCa (and no FORA-mode) Wan check: TaylorSeer-Wan2.1's block forward implements the 'full'
    and 'Taylor' step types only (its FORA / ToCa modes give cached steps the type 'ToCa'), and Shenyi-Z/ToCa has
    no Wan code."""
    from benchmarks.fidelity.fora_wan import WAN_DIR

    ts = _source("Shenyi-Z+TaylorSeer", "Shenyi-Z/TaylorSeer")
    block = ts.read(f"{WAN_DIR}/taylorseer/forwards/wan_attention_forward.py")
    assert "current['type'] == 'Taylor'" in block and "Not supported type" in block
    assert "== 'ToCa'" not in block
    assert "current['type'] = 'ToCa'" in ts.read(f"{WAN_DIR}/taylorseer/cache_functions/cal_type.py")
    toca = _source("Shenyi-Z+ToCa", "Shenyi-Z/ToCa")
    files = subprocess.run(
        ["git", f"--git-dir={toca.root}", "ls-tree", "-r", "--name-only", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert files and not [f for f in files if "wan" in f.lower() and f.endswith(".py")]
