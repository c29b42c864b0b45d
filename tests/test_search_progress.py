"""Budget searches are never silent: one line per probe (method, knob value, measured K, seconds, count)."""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace

from harness.context import ModelContext


def _ctx(progress: bool) -> SimpleNamespace:
    return SimpleNamespace(spec=SimpleNamespace(name="flux-tiny"), progress=progress, _probes=0)


def test_probe_lines_with_progress_and_count(capsys):
    ctx = _ctx(True)
    ModelContext.report_probe(ctx, "teacache rel_l1_thresh=0.25", 13.4567, 2.04)
    ModelContext.report_probe(ctx, "teacache rel_l1_thresh=0.5", 9.1, 1.5)
    ModelContext.report_probe(ctx, "", 9.1, 1.5)  # an unlabelled measurement is not a probe
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "[flux-tiny] budget search teacache rel_l1_thresh=0.25: K = 13.46 (2.0 s, probe 1)",
        "[flux-tiny] budget search teacache rel_l1_thresh=0.5: K = 9.10 (1.5 s, probe 2)",
    ]


class _Tty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_under_pytest_lines_go_to_the_terminal_only(monkeypatch):
    for tty, expected in ((True, 1), (False, 0)):
        term = _Tty(tty)
        monkeypatch.setattr(sys, "__stderr__", term)
        ModelContext.report_probe(_ctx(False), "dpcache k=13", 13.0, 0.5)
        assert len(term.getvalue().splitlines()) == expected, tty
