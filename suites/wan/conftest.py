"""Wan2.1 suite fixtures: the model per --scale, one benchmark session per model (calibration, references and
sampling done once, cached on disk), the method × budget parametrisation with ids `<model>-<method>-K<k>`."""

from __future__ import annotations

from pathlib import Path

import pytest

from suites.common import Suite, generate_tests, group_items, open_session

SUITE = Suite(
    "wan",
    Path(__file__).resolve().parent,
    # tiny: text-to-video; full: image-to-video as released (K = 12, first_full_steps 4, last_full_steps 1,
    # set in the registry spec)
    {"tiny": "wan-tiny", "medium": "wan-medium", "full": "wan2.1-i2v-14b-720p"},
    budgets={"full": (25, 12, 9), "*": (25, 13, 9)},
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    generate_tests(SUITE, metafunc)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    group_items(SUITE, config, items)


@pytest.fixture(scope="session")
def suite_session(bench_options, pytestconfig):
    """The suite model's `BenchSession`; skips with the registry's reason when its weights are absent."""
    return open_session(SUITE, bench_options, pytestconfig)
