"""`--dist loadgroup` keeps an xdist_group on one worker (the harness plugin restores it under pytest ≥ 9.2)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_loadgroup_keeps_a_group_on_one_worker(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.xdist_group("model-a")
        @pytest.mark.parametrize("i", range(6))
        def test_a(i):
            with open(os.path.join(os.environ["OUT_DIR"], f"a{i}"), "w") as f:
                f.write(os.environ.get("PYTEST_XDIST_WORKER", "main"))
        """
    )
    out = pytester.path / "out"
    out.mkdir()
    pytester._monkeypatch.setenv("OUT_DIR", str(out))
    res = pytester.runpytest_subprocess(
        "-p", "harness.plugin", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q"
    )
    res.assert_outcomes(passed=6)
    workers = {p.read_text() for p in out.iterdir()}
    assert len(workers) == 1, f"one xdist_group ran on several workers: {workers}"
