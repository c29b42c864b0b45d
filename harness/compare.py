"""`dpcache-bench compare RUN_A RUN_B`: the side-by-side table of two runs (like `asv compare`), before,
after and ratio per metric, significant changes marked; also written as HTML."""

from __future__ import annotations

import argparse
import html
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.history import LOWER_IS_BETTER, Point, load_points

COMPARE_METRICS = ("flops_speedup", "wall_speedup", "psnr", "ssim", "lpips", "measured_k")
MARKS = {"worse": "!", "better": "+", "same": " ", "missing": "x"}


@dataclass
class Row:
    model: str
    config: str
    metric: str
    before: float | None
    after: float | None
    mark: str

    @property
    def ratio(self) -> float | None:
        if self.before is None or self.after is None or self.before == 0:
            return None
        return self.after / self.before


def resolve_run(points: list[Point], name: str) -> str:
    """The invocation `name` names: exact, else the only invocation or MLflow run id containing it."""
    invs = sorted({p.invocation for p in points})
    if name in invs:
        return name
    by_run = {p.run_id: p.invocation for p in points if p.run_id}
    if name in by_run:
        return by_run[name]
    hits = [i for i in invs if name in i]
    if len(hits) == 1:
        return hits[0]
    from harness.cli import BenchUsageError

    why = f"matches {len(hits)} runs" if hits else "matches no run"
    raise BenchUsageError(f"run {name!r} {why} (runs: {', '.join(invs[-5:]) or 'none'})")


def compare_rows(points: list[Point], run_a: str, run_b: str, threshold: float = 0.05) -> list[Row]:
    """One row per (model, config, metric) in either run; marked `!` when worse by more than `threshold`
    (relative), `+` when better, `x` when only one run has it."""
    a = {p.key: p for p in points if p.invocation == run_a}
    b = {p.key: p for p in points if p.invocation == run_b}
    rows = []
    for key in sorted(set(a) | set(b)):
        for m in COMPARE_METRICS:
            va = a[key].metrics.get(m) if key in a else None
            vb = b[key].metrics.get(m) if key in b else None
            if va is None and vb is None:
                continue
            if va is None or vb is None:
                mark = MARKS["missing"]
            else:
                rel = (vb - va) / abs(va) if va else (math.inf if vb != va else 0.0)
                if abs(rel) <= threshold:
                    mark = MARKS["same"]
                else:
                    worse = (rel < 0) != (m in LOWER_IS_BETTER)
                    mark = MARKS["worse" if worse else "better"]
            rows.append(Row(key[0], key[3], m, va, vb, mark))
    return rows


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def format_table(rows: list[Row], run_a: str, run_b: str) -> str:
    head = f"  {'before':>10} {'after':>10} {'ratio':>7}  {'model':<14} {'config':<26} metric"
    lines = [f"A = {run_a}", f"B = {run_b}", head, "-" * len(head)]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        lines.append(
            f"{r.mark} {_f(r.before):>10} {_f(r.after):>10} {ratio:>7}  {r.model:<14} {r.config:<26} {r.metric}"
        )
    worse = sum(r.mark == MARKS["worse"] for r in rows)
    lines.append(
        f"{worse} significantly worse (!), {sum(r.mark == MARKS['better'] for r in rows)} better (+), "
        f"{sum(r.mark == MARKS['missing'] for r in rows)} in one run only (x)"
    )
    return "\n".join(lines)


def write_html(rows: list[Row], run_a: str, run_b: str, path: Path) -> Path:
    color = {"!": "#fdd", "+": "#dfd", "x": "#eee", " ": "#fff"}
    cells = "".join(
        f"<tr style='background:{color[r.mark]}'><td>{html.escape(r.mark)}</td><td>{_f(r.before)}</td><td>{_f(r.after)}</td>"
        f"<td>{'-' if r.ratio is None else f'{r.ratio:.3f}'}</td><td>{html.escape(r.model)}</td>"
        f"<td>{html.escape(r.config)}</td><td>{html.escape(r.metric)}</td></tr>"
        for r in rows
    )
    page = (
        "<!doctype html><meta charset='utf-8'><title>dpcache compare</title>"
        f"<h1>{html.escape(run_a)} &rarr; {html.escape(run_b)}</h1><table border=1 cellspacing=0>"
        "<tr><th></th><th>before</th><th>after</th><th>ratio</th><th>model</th><th>config</th><th>metric</th></tr>"
        f"{cells}</table>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.cli import BenchUsageError

    paths = (
        [Path(p) for p in args.json_in or ["results.jsonl"]] if args.json_in or not args.mlflow_uri else []
    )
    for p in paths:
        if not p.is_file():
            raise BenchUsageError(f"--json-in {p}: no such file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        points = load_points(paths, args.mlflow_uri)
    run_a, run_b = resolve_run(points, args.run_a), resolve_run(points, args.run_b)
    rows = compare_rows(points, run_a, run_b, args.threshold)
    print(format_table(rows, run_a, run_b))
    print(f"dpcache compare: {write_html(rows, run_a, run_b, Path(args.html))}")
    return 1 if args.fail_worse and any(r.mark == MARKS["worse"] for r in rows) else 0


def add_parser(sub: Any, fmt: Any) -> None:
    c = sub.add_parser(
        "compare",
        help="Print two runs side by side with ratios, mark significant changes and write the HTML table.",
        formatter_class=fmt,
    )
    c.add_argument(
        "run_a", metavar="RUN_A", help="invocation id (or a unique part of it, or an MLflow run id)"
    )
    c.add_argument("run_b", metavar="RUN_B", help="the run to compare with RUN_A")
    c.add_argument("--json-in", action="append", default=None, help="JSON-lines records file (repeatable)")
    c.add_argument("--mlflow-uri", default=None, help="also read the runs of the dpcache* experiments there")
    c.add_argument("--threshold", type=float, default=0.05, help="relative change marked significant")
    c.add_argument("--html", default="reports/compare.html", help="where the HTML table is written")
    c.add_argument("--fail-worse", action="store_true", help="exit 1 when any metric is significantly worse")
    c.set_defaults(func=cmd_compare)
