"""The suites' outcomes (suites/common.py): a committed configuration that can no longer run, and a tiny model
whose committed weights are absent, fail instead of skipping; what is not committed skips with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plugin_demo import SPECS


class _FakeSession:
    """What `suites.common.result` reads of a BenchSession: a method whose budget became unreachable."""

    def __init__(self, directory: Path) -> None:
        from types import SimpleNamespace

        self.spec = SimpleNamespace(name="flux-tiny", family="flux", scale="tiny")
        self.suite_def = SimpleNamespace(directory=directory)
        self.logged: set[str] = set()
        self.logs: list = []

    def supports(self, method):
        return True, ""

    def tag(self, method, budget, base=None):
        return f"{method}-K{budget}"

    def record(self, method, budget):
        from harness.methods import UnreachableBudget

        raise UnreachableBudget(f"{method} cannot reach budget K={budget}: its floor is K=11.2")

    def not_run(self, method, budget, error):
        from harness.records import ResultRecord

        rec = ResultRecord.create(suite="flux", model="flux-tiny", scale="tiny", method=method, budget=budget,
                                  num_steps=50)  # fmt: skip
        rec.outcome.status, rec.outcome.reason = "not_run", str(error)
        return rec


def test_a_committed_configuration_that_becomes_unreachable_fails_not_skips(tmp_path):
    """Old: `suites/common.result` skipped it and the run exited 0 (3 passed became 3 skipped)."""
    from suites.common import result

    (tmp_path / "expected.json").write_text(
        json.dumps({"schema": 2, "models": {"flux-tiny": {"configs": {"teacache-K9": SPECS}}}})
    )
    session = _FakeSession(tmp_path)
    with pytest.raises(
        pytest.fail.Exception, match=r"committed expectation .* can no longer run: teacache cannot"
    ):
        result(session, "teacache", 9)
    logged = []
    tracker = type("T", (), {"log": lambda self, rec, **kw: logged.append(rec)})()
    with pytest.raises(pytest.skip.Exception, match="K=7"):  # nothing committed: skipped with the reason
        result(session, "teacache", 7, tracker)
    assert [(r.method, r.identity.budget, r.outcome.status) for r in logged] == [("teacache", 7, "not_run")]


def test_a_missing_tiny_model_fails_the_suite_not_skips(monkeypatch, tmp_path):
    """Old: a tiny model whose committed weights are absent skipped the whole suite."""
    from types import SimpleNamespace

    import harness.zoo.registry as registry
    from suites.common import Suite, open_session

    monkeypatch.delenv("DPCACHE_RANDOM_WEIGHTS", raising=False)
    spec = SimpleNamespace(name="flux-tiny", scale="tiny", builder=None)
    monkeypatch.setattr(registry, "get_spec", lambda name: spec)
    monkeypatch.setattr(registry, "availability", lambda s: (False, "weights file missing"))
    suite = Suite("flux", tmp_path, {"tiny": "flux-tiny", "full": "flux-dev"})
    config = SimpleNamespace(getoption=lambda name: "tiny", rootpath=tmp_path)
    with pytest.raises(
        pytest.fail.Exception, match="flux-tiny unavailable although its weights are committed"
    ):
        open_session(suite, SimpleNamespace(), config)
    spec.scale = "full"  # a full-scale model absent here is a skip, with the reason
    config = SimpleNamespace(getoption=lambda name: "full", rootpath=tmp_path)
    with pytest.raises(pytest.skip.Exception, match="weights file missing"):
        open_session(suite, SimpleNamespace(), config)
