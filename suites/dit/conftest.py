"""DiT (class-conditional, batched CFG) suite fixtures: the model per --scale, one benchmark session per model (calibration, references and
sampling done once, cached on disk), the method × budget parametrisation with ids `<model>-<method>-K<k>`."""

from __future__ import annotations

from pathlib import Path

import pytest

from suites.common import Suite, generate_tests, group_items, open_session

SUITE = Suite(
    "dit",
    Path(__file__).resolve().parent,
    {"tiny": "dit-tiny", "medium": "dit-medium", "full": "dit-xl-2-256"},
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    generate_tests(SUITE, metafunc)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    group_items(SUITE, config, items)


@pytest.fixture(scope="session")
def suite_session(bench_options, pytestconfig):
    """The suite model's `BenchSession`; skips with the registry's reason when its weights are absent."""
    return open_session(SUITE, bench_options, pytestconfig)
