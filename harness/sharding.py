"""Splitting the nightly over runners and GPUs and gathering it back: the pytest options `--shard I/N`,
`--shard-by` and `--cache-dir`, the workflow's (suite × shard) matrix, and the night's records read back
from MLflow (`python -m harness.sharding matrix|gather`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

GROUP = "dpcache benchmark"
SHARD_BY = ("group", "method", "budget")


def parse_shard(spec: str) -> tuple[int, int]:
    """`"I/N"` → (I, N) with 1 ≤ I ≤ N; raises ValueError with the accepted form otherwise."""
    try:
        i, n = (int(p) for p in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 2/4), got {spec!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {spec}: need 1 <= I <= N")
    return i, n


def assign(weights: Mapping[str, float], n: int) -> dict[str, int]:
    """Deterministic balanced split of units over `n` shards (0-based): heaviest unit first, each to the
    least-loaded shard (lowest index on a tie); the same units and weights always give the same split."""
    loads = [0.0] * n
    out: dict[str, int] = {}
    for key in sorted(weights, key=lambda k: (-weights[k], k)):
        shard = min(range(n), key=lambda s: (loads[s], s))
        out[key] = shard
        loads[shard] += weights[key]
    return out


def item_group(item: pytest.Item) -> str:
    """The item's xdist loadgroup (its `xdist_group` names joined as the harness plugin joins them), else
    its file: tests of one file, or of one group, stay on one shard."""
    names = sorted(
        {
            str(m.args[0] if m.args else m.kwargs.get("name", "default"))
            for m in item.iter_markers("xdist_group")
        }
    )
    return "_".join(names) if names else item.nodeid.split("::")[0]


def _param(item: pytest.Item, name: str) -> str | None:
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get(name) if callspec is not None else None
    return str(value) if value is not None else None


def item_method(item: pytest.Item) -> str | None:
    return _param(item, "method")


def unit_suffix(item: pytest.Item, by: str) -> str | None:
    """What `by` adds to the loadgroup: the method (`method`), or method and budget (`budget`); None for
    tests that are not parametrized by a method (calibration, references, runtime checks)."""
    method = item_method(item)
    if by == "group" or method is None:
        return None
    budget = _param(item, "budget") if by == "budget" else None
    return f"{method}.K{budget}" if budget is not None else method


def unit_key(item: pytest.Item, by: str = "group") -> str:
    """The unit a shard keeps whole: the loadgroup; with `by="method"` the loadgroup × method (a model's
    tests of one method); with `by="budget"` × budget too (one knob search and one record each)."""
    group, suffix = item_group(item), unit_suffix(item, by)
    return f"{group}.{suffix}" if suffix else group


def select(
    items: Sequence[pytest.Item], shard: int, n: int, by: str = "group"
) -> tuple[list[Any], list[Any]]:
    """(kept, deselected) for 1-based `shard` of `n`; units weighted by their number of tests."""
    weights: dict[str, float] = {}
    for item in items:
        key = unit_key(item, by)
        weights[key] = weights.get(key, 0) + 1
    where = assign(weights, n)
    kept = [i for i in items if where[unit_key(i, by)] == shard - 1]
    return kept, [i for i in items if where[unit_key(i, by)] != shard - 1]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, GROUP)
    group.addoption(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only shard I of N: a deterministic split of the collected tests that keeps each xdist "
        "loadgroup (see --shard-by) on one shard (default: every test)",
    )
    group.addoption(
        "--shard-by",
        choices=SHARD_BY,
        default="group",
        help="the unit kept whole: 'group' (a model's tests), 'method' (a model's tests of one method) or "
        "'budget' (of one method at one budget); a finer unit also becomes the xdist loadgroup, so one "
        "job's GPUs share a model's methods (default: group)",
    )
    group.addoption(
        "--cache-dir",
        dest="dpcache_cache_dir",
        default=None,
        metavar="DIR",
        help="calibration / budget / reference cache (default $DPCACHE_CACHE_DIR, else <rootdir>/.dpcache-cache); "
        "keep it outside the checkout to reuse calibrations across runs",
    )


def pytest_configure(config: pytest.Config) -> None:
    spec = config.getoption("shard", None)
    if spec:
        try:
            parse_shard(spec)
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Runs after the suites' conftests mark each model's xdist_group and before the harness plugin turns
    the groups into node ids (trylast), so `--shard-by method|budget` groups reach `--dist loadgroup`."""
    by = config.getoption("shard_by", "group")
    spec = config.getoption("shard", None)
    if spec:
        i, n = parse_shard(spec)
        kept, dropped = select(items, i, n, by)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    for item in items:  # the finer unit becomes the loadgroup (the plugin joins an item's group names)
        suffix = unit_suffix(item, by)
        if suffix and item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(f"{item_group(item)}.{suffix}"))


def pytest_report_header(config: pytest.Config) -> str | None:
    spec = config.getoption("shard", None)
    return f"dpcache: shard {spec} (by {config.getoption('shard_by', 'group')})" if spec else None


# ---------------------------------------------------------------------------------------------- workflow
def matrix(shards: str, only: Iterable[str] = ()) -> dict[str, list[dict[str, str]]]:
    """The nightly's job matrix from `"flux=2 wan=4 ..."` (suite=number of shards), restricted to the
    suites in `only` when given: `{"include": [{"suite": "flux", "shard": "1/2"}, ...]}`."""
    plan: dict[str, int] = {}
    for word in shards.split():
        suite, _, count = word.partition("=")
        if not suite or not count.isdigit() or int(count) < 1:
            raise ValueError(f"shard plan entries look like suite=N (N >= 1), got {word!r}")
        plan[suite] = int(count)
    wanted = [s.strip().removeprefix("suites/").strip("/") for s in only if s.strip()]
    unknown = sorted(set(wanted) - set(plan))
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; the plan has {sorted(plan)}")
    return {
        "include": [
            {"suite": suite, "shard": f"{i}/{n}"}
            for suite, n in plan.items()
            if not wanted or suite in wanted
            for i in range(1, n + 1)
        ]
    }


def gather(tracking_uri: str, git_sha: str, since_ms: int, out: Path, prefix: str = "dpcache") -> int:
    """Write the records of every child run logged since `since_ms` for `git_sha` (tag `git_sha`), in the
    experiments whose name starts with `prefix`, to `out` as JSON lines (`{"invocation": ..., **record}`,
    the format `dpcache-bench report --json-in` reads). Returns the number of records."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    flt = f"tags.`dpcache.role` = 'child' and tags.git_sha = '{git_sha}' and attributes.start_time >= {since_ms}"
    lines = []
    for run in client.search_runs(exps, filter_string=flt, max_results=50000) if exps else []:
        path = client.download_artifacts(run.info.run_id, "record.json")
        record = json.loads(Path(path).read_text())
        lines.append(
            json.dumps({"invocation": run.data.tags.get("dpcache.invocation"), **record}, sort_keys=True)
        )
    out.write_text("".join(line + "\n" for line in sorted(lines)))
    return len(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.sharding", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("matrix", help="print the nightly's job matrix as JSON")
    m.add_argument("plan", help='suite=shards entries, e.g. "flux=2 wan=4 hunyuan_video=3 dit=1"')
    m.add_argument("--only", default="", help="space-separated suites to keep (default: all in the plan)")
    g = sub.add_parser("gather", help="the night's records from MLflow as JSON lines")
    g.add_argument("--tracking-uri", required=True)
    g.add_argument("--git-sha", required=True, help="the commit every shard ran (runs are tagged git_sha)")
    g.add_argument(
        "--since-ms", type=int, required=True, help="runs started at or after this epoch time (ms)"
    )
    g.add_argument("--out", type=Path, default=Path("results-nightly.jsonl"))
    g.add_argument("--experiment-prefix", default="dpcache", help="experiments searched (default: dpcache*)")
    a = p.parse_args(argv)
    try:
        if a.cmd == "matrix":
            print(json.dumps(matrix(a.plan, a.only.split())))
            return 0
        n = gather(a.tracking_uri, a.git_sha, a.since_ms, a.out, a.experiment_prefix)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{n} record(s) from {a.tracking_uri} -> {a.out}")
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
