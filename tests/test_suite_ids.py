"""The FLUX suite's test ids carry model, method and budget, so -k speedup / -k dpcache / -k K13 select
sensibly, every item is grouped by model for --dist loadgroup, and --scale full selects flux-dev."""

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


def _collect(pytester: pytest.Pytester, *args: str) -> list[str]:
    res = pytester.runpytest_inprocess(
        str(ROOT / "suites" / "flux"), "--collect-only", "-q", f"--rootdir={ROOT}", "-c", str(ROOT / "pyproject.toml"),
        "-p", "no:cacheprovider", *args,
    )
    ids = [line.split("suites/flux/", 1)[1] for line in res.outlines if "::" in line]
    assert ids, res.stdout.str() + res.stderr.str()
    return ids


def test_suite_ids_select_sensibly(pytester: pytest.Pytester):
    speed = _collect(pytester, "-k", "speedup")
    assert speed == [
        f"test_speedup.py::test_speedup[flux-tiny-{x}]"
        for x in ("full-K50", "fewer-steps-K25", "fewer-steps-K13", "fewer-steps-K9",
                  "dpcache-K25", "dpcache-K13", "dpcache-K9")
    ]
    dp = _collect(pytester, "-k", "dpcache")
    assert dp and all("dpcache" in i for i in dp)
    assert {i.split("::")[1].split("[")[0] for i in dp} == {"test_speedup", "test_quality", "test_schedule"}
    k13 = _collect(pytester, "-k", "K13")
    assert sorted(k13) == sorted([
        "test_calibration.py::test_schedule[flux-tiny-dpcache-K13]",
        "test_quality.py::test_quality[flux-tiny-fewer-steps-K13]",
        "test_quality.py::test_quality[flux-tiny-dpcache-K13]",
        "test_speedup.py::test_speedup[flux-tiny-fewer-steps-K13]",
        "test_speedup.py::test_speedup[flux-tiny-dpcache-K13]",
    ])
    both = _collect(pytester, "-k", "speedup and dpcache and K9")
    assert both == ["test_speedup.py::test_speedup[flux-tiny-dpcache-K9]"]


def test_options_change_the_ids(pytester: pytest.Pytester):
    ids = _collect(pytester, "-k", "speedup", "--budgets", "13", "--methods", "dpcache", "--scale", "full")
    assert ids == ["test_speedup.py::test_speedup[flux-dev-dpcache-K13]"]
