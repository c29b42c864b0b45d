"""The results table at the end of a benchmark pytest session (method × budget: FLOPs ×, wall ×, PSNR,
measured K, Δ to expected), like pytest-benchmark's; registered from harness.plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROW_KEY = "dpcache_row"
DELTA_METRICS = ("flops_speedup", "psnr")


def result_row(record: Any, expected_path: Path) -> dict[str, Any]:
    """What the table needs of one gated record (plain data: user properties cross xdist)."""
    i, sp = record.identity, record.speed
    row = {
        "test_id": record.test_id,
        "model": i.model,
        "method": i.method,
        "budget": i.budget,
        "flops_speedup": record.metric("flops_speedup"),
        "wall_speedup": record.metric("wall_speedup"),
        "psnr": record.metric("psnr"),
        "measured_k": sp.measured_k,
        "unmatched": record.unmatched,
        "run_id": record.provenance.mlflow_run_id,
        "delta": {},
    }
    try:
        from harness.gates import expected_configs

        specs = (expected_configs(expected_path, i.model) or {}).get(i.config_tag) or {}
    except (OSError, ValueError):
        specs = {}
    for m in DELTA_METRICS:
        spec, v = specs.get(m), row[m]
        if isinstance(spec, dict) and isinstance(spec.get("value"), (int, float)) and v is not None:
            row["delta"][m] = v - float(spec["value"])
    return row


def _f(v: Any, spec: str = ".2f", signed: bool = False) -> str:
    if v is None:
        return "-"
    return format(v, ("+" if signed else "") + spec)


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        f"{'model':<14} {'method':<16} {'K':>3} {'FLOPs x':>8} {'wall x':>7} {'PSNR':>7} {'meas. K':>8} "
        f"{'Δ FLOPs x':>10} {'Δ PSNR':>7}"
    )
    lines = [head, "-" * len(head)]
    key = lambda r: (r["model"], r["method"], -(r["budget"] or 10**6))  # noqa: E731
    for r in sorted(rows, key=key):
        k = "-" if r["measured_k"] is None else f"{r['measured_k']:.2f}" + ("!" if r["unmatched"] else "")
        lines.append(
            f"{r['model']:<14} {r['method']:<16} {r['budget'] if r['budget'] is not None else '-':>3} "
            f"{_f(r['flops_speedup']):>8} {_f(r['wall_speedup']):>7} {_f(r['psnr']):>7} {k:>8} "
            f"{_f(r['delta'].get('flops_speedup'), '.3f', True):>10} {_f(r['delta'].get('psnr'), '.2f', True):>7}"
        )
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    tr = terminalreporter
    rows: dict[str, dict[str, Any]] = {}
    for reports in tr.stats.values():
        for rep in reports:
            if getattr(rep, "when", None) != "call":
                continue
            for k, v in getattr(rep, "user_properties", ()):
                if k == ROW_KEY:
                    rows[v["test_id"]] = dict(v)
    if not rows:
        return
    tr.section("dpcache results")
    for line in format_rows(list(rows.values())):
        tr.write_line(line)
    models = len({r["model"] for r in rows.values()})
    passed, failed = len(tr.stats.get("passed", [])), len(tr.stats.get("failed", []))
    tr.write_line(
        f"{len(rows)} result(s) over {models} model(s); {passed} test(s) passed, {failed} failed "
        "(! after measured K: UNMATCHED, off K by > 5 %; Δ: measured minus expected.json)"
    )
