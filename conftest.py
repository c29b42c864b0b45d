"""Repository-wide pytest setup: the benchmark plugin, and each test marked by the folder it lives in —
`unit` under tests/, `suite` under suites/ — so `pytest -m unit` selects what `pytest tests` runs and
`pytest -m suite` what `pytest suites` runs (both markers registered in pyproject.toml)."""

from __future__ import annotations

import pytest

pytest_plugins = ["harness.plugin"]

FOLDER_MARKERS = {"tests": "unit", "suites": "suite"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects (pytest's own hook)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = item.path.relative_to(config.rootpath).parts[0]
        except ValueError:  # a test outside the repository (pytester's temporary folders)
            continue
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])
