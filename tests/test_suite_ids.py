"""The suites' test ids carry model, method and budget, so -k speedup / -k dpcache / -k K13 select
sensibly in every suite, and --scale full selects the full-scale models."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _preload():
    """In-process runs restore sys.modules afterwards: import numpy/torch/baselines here, once, outside."""
    from harness.methods import registry
    from harness.zoo.registry import get_spec

    registry()
    get_spec("flux-tiny").calibration_prompts  # noqa: B018  (imports the digit-scene data)


def _collect(pytester: pytest.Pytester, *args: str, suite: str = "flux") -> list[str]:
    res = pytester.runpytest_inprocess(
        str(ROOT / "suites" / suite),
        "--collect-only",
        "-q",
        f"--rootdir={ROOT}",
        "-c",
        str(ROOT / "pyproject.toml"),
        "-p",
        "no:cacheprovider",
        *args,
    )
    ids = [line.split(f"suites/{suite}/", 1)[1] for line in res.outlines if "::" in line]
    assert ids, res.stdout.str() + res.stderr.str()
    return ids


def test_suite_ids_select_sensibly(pytester: pytest.Pytester):
    speed = _collect(pytester, "-k", "speedup", "--methods", "full,fewer-steps,dpcache")
    assert speed == [
        f"test_flux.py::test_speedup[flux-tiny-{x}]"
        for x in (
            "full-K50",
            "fewer-steps-K25",
            "fewer-steps-K13",
            "fewer-steps-K9",
            "dpcache-K25",
            "dpcache-K13",
            "dpcache-K9",
        )
    ]
    dp = _collect(pytester, "-k", "dpcache")
    assert dp and all("dpcache" in i for i in dp)
    assert {i.split("::")[1].split("[")[0] for i in dp} == {"test_speedup", "test_quality", "test_schedule"}
    k13 = _collect(pytester, "-k", "K13", "--methods", "fewer-steps,dpcache")
    assert sorted(k13) == sorted(
        [
            "test_flux.py::test_schedule[flux-tiny-dpcache-K13]",
            "test_flux.py::test_quality[flux-tiny-fewer-steps-K13]",
            "test_flux.py::test_quality[flux-tiny-dpcache-K13]",
            "test_flux.py::test_speedup[flux-tiny-fewer-steps-K13]",
            "test_flux.py::test_speedup[flux-tiny-dpcache-K13]",
        ]
    )
    both = _collect(pytester, "-k", "speedup and dpcache and K9")
    assert both == [f"test_flux.py::test_speedup[flux-tiny-{m}-K9]" for m in ("dpcache", "dpcache-tuned")]


@pytest.mark.parametrize(
    ("suite", "model"),
    [("wan", "wan-i2v-tiny"), ("hunyuan_video", "hunyuan-video-tiny"), ("dit", "dit-tiny")],
)
def test_every_suite_selects_like_flux(pytester: pytest.Pytester, suite: str, model: str):
    speed = _collect(pytester, "-k", "speedup", suite=suite)
    assert speed and all(i.startswith(f"test_{suite}.py::test_speedup[{model}-") for i in speed)
    assert {
        f"test_{suite}.py::test_speedup[{model}-{x}]"
        for x in ("full-K50", "dpcache-K25", "dpcache-K13", "dpcache-K9")
    } <= set(speed)
    quality = _collect(pytester, "-k", "quality and dpcache", suite=suite)
    # dpcache is swept over every default budget; dpcache-tuned and the competitors run at K <= 13 by default
    assert quality == [f"test_{suite}.py::test_quality[{model}-dpcache-K{k}]" for k in (25, 13, 9)] + [
        f"test_{suite}.py::test_quality[{model}-dpcache-tuned-K{k}]" for k in (13, 9)
    ]
    gentle = _collect(pytester, "-k", "quality and K25", "--budgets", "25", suite=suite)
    assert f"test_{suite}.py::test_quality[{model}-teacache-K25]" in gentle
    practice = _collect(pytester, "-m", "runtime", suite=suite)
    assert {i.split("::")[1] for i in practice} == {
        "test_other_step_count_is_refused",
        "test_other_step_count_recalibrates",
        "test_batch_of_two_matches_single_samples",
        "test_cfg_branches",
    }


def test_options_change_the_ids(pytester: pytest.Pytester):
    ids = _collect(pytester, "-k", "speedup", "--budgets", "13", "--methods", "dpcache", "--scale", "full")
    assert ids == ["test_flux.py::test_speedup[flux-dev-dpcache-K13]"]
    wan = _collect(pytester, "-k", "speedup and dpcache", "--scale", "full", suite="wan")
    assert wan == [f"test_wan.py::test_speedup[wan2.1-i2v-14b-720p-dpcache-K{k}]" for k in (25, 12, 9)] + [
        f"test_wan.py::test_speedup[wan2.1-i2v-14b-720p-dpcache-tuned-K{k}]" for k in (12, 9)
    ]
