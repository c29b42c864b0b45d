"""The benchmark report: HTML pages per run (`build`), their parts (`html`, `plots`), `BENCHMARKS.md` (`md`), and
the record helpers they share (`data`). `python -m harness.report ...` is `dpcache-bench report ...`."""

from __future__ import annotations

from harness.report.build import build_report
from harness.report.md import benchmarks_markdown, write_benchmarks_md

__all__ = ["benchmarks_markdown", "build_report", "write_benchmarks_md"]
