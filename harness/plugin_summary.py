"""End of a benchmark session: expected.json rewrites, the strict check that every expectation got a result,
and the terminal summary (UNAVAILABLE metrics, UNMATCHED compute, UNGATED results, where records went)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def record_info(record: Any, path: Path) -> dict[str, Any]:
    """What the summary needs of a gated record (user properties cross xdist as plain data)."""
    i, sp = record.identity, record.speed
    return {
        "test_id": record.test_id,
        "model": i.model,
        "scale": i.scale,
        "config_tag": i.config_tag,
        "unavailable": record.unavailable(),
        "expected": str(path),
        "gated": False,
        "ungated": [],
        "unmatched": (
            f"measured K={sp.measured_k:.2f} on the evaluation prompts vs K={i.budget}"
            if record.unmatched
            else ""
        ),
        "caveats": list(record.outcome.caveats),
    }


def _infos(reporter: Any, key: str) -> list[dict[str, Any]]:
    return [
        dict(value)
        for reports in reporter.stats.values()
        for rep in reports
        if getattr(rep, "when", None) == "call"
        for k, value in getattr(rep, "user_properties", ())
        if k == key
    ]


def _complete_run(config: pytest.Config, options: Any) -> bool:
    """Whether every default configuration of the suites was selected (nothing narrowed by -k, -m, node ids,
    --deselect, --shard, --budgets or --methods), so an expectation without a result means a result went missing."""
    opt = config.option
    narrowed = getattr(opt, "keyword", "") or getattr(opt, "markexpr", "") or getattr(opt, "deselect", None)
    narrowed = narrowed or getattr(opt, "shard", None)
    node_ids = any("::" in str(a) for a in config.args)
    methods = options.methods is None or options.methods == ["all"]
    return not narrowed and not node_ids and options.budgets is None and methods


def orphan_expectations(infos: list[dict[str, Any]]) -> list[str]:
    """Expectations of the models that ran whose config produced no gated result, one line each."""
    from harness.gates import ExpectedFormatError, expected_configs

    seen: dict[tuple[str, str], set[str]] = {}
    for i in infos:
        seen.setdefault((i["expected"], i["model"]), set()).add(i["config_tag"])
    out = []
    for (path, model), tags in sorted(seen.items()):
        try:
            configs = expected_configs(path, model) or {}
        except ExpectedFormatError:  # already failed every test gated against it, with the reason
            continue
        for tag in sorted(set(configs) - tags):
            out.append(f"{path}: {model} {tag} is expected but no test produced a result for it")
    return out


def pytest_sessionfinish(session: pytest.Session) -> None:
    from harness.plugin import _STATE

    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    if state.pending:
        from harness.gates import update_expected

        for path, records in state.pending.items():
            update_expected(path, records)
            state.rewritten.append(path)
        state.pending.clear()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or hasattr(session.config, "workerinput") or state.options.update_expected:
        return
    infos = [i for i in _infos(reporter, "dpcache_record") if state.options.strict(i["scale"])]
    if infos and _complete_run(session.config, state.options) and session.exitstatus in (0, 1):
        state.orphans = orphan_expectations(infos)
        if state.orphans:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    from harness.plugin import _STATE

    state = config.stash.get(_STATE, None)
    if state is None:
        return
    tr = terminalreporter
    infos, ungated_checks = _infos(tr, "dpcache_record"), _infos(tr, "dpcache_ungated")
    if not infos and not ungated_checks and state.tracker is None:
        return
    tr.section("dpcache benchmark")
    shown: set[tuple[str, str]] = set()
    for info in infos:  # a record gated by several tests (speed, quality) is reported once per line
        lines = [
            (m, f"{m} UNAVAILABLE (recorded as null, not passed): {r}")
            for m, r in info["unavailable"].items()
        ]
        lines += [("unmatched", f"UNMATCHED compute: {info['unmatched']} (not ranked at K)")] * bool(
            info.get("unmatched")
        )
        lines += [(f"caveat{n}", f"CAVEAT: {c}") for n, c in enumerate(info.get("caveats", []))]
        lines += [(f"ungated:{u}", f"UNGATED: {u}") for u in info.get("ungated", [])]
        for key, text in sorted(lines):
            if (info["test_id"], key) not in shown:
                shown.add((info["test_id"], key))
                tr.write_line(f"{info['test_id']}: {text}")
    for u in ungated_checks:
        tr.write_line(f"{u['test_id']}: UNGATED: {u['reason']}")
    for line in getattr(state, "orphans", []):
        tr.write_line(f"FAILED (expectation without a result): {line}")
    rewritten = sorted(
        set(state.rewritten) | ({i["expected"] for i in infos} if state.options.update_expected else set())
    )
    for path in rewritten:
        tr.write_line(f"--update-expected: rewrote {path}")
    if state.tracker is not None:
        tr.write_line(state.tracker.summary())
        return
    from harness.tracking import resolve_tracking_uri  # xdist controller: the workers wrote the records

    uri = resolve_tracking_uri(state.options.mlflow_uri)
    tr.write_line(f"dpcache: result records in JSON lines {state.options.json_out}")
    errors = sorted({i["mlflow_error"] for i in infos if i.get("mlflow_error")})
    if uri is None:
        tr.write_line("dpcache: MLflow tracking off")
    elif errors:
        tr.write_line(
            f"dpcache: MLflow {uri} was unreachable ({errors[0]}); records kept in {state.options.json_out}"
        )
    else:
        tr.write_line(f"dpcache: MLflow store {uri} (invocation {state.invocation_id})")
