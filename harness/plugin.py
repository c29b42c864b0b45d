"""pytest plugin of the dpcache benchmark: options, markers, the `bench_options`/`tracker`/`gate`
fixtures and the session summary. Imports no torch, diffusers or mlflow at module level."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

GROUP = "dpcache benchmark"
SCALES = ("tiny", "medium", "full")
MARKERS = {
    "speedup": "speed of a method at a budget (FLOPs speedup gated, wall-clock measured)",
    "quality": "quality of a method at a budget against the stored full-step reference",
    "calibration": "calibration of a model (cost tensor built, metadata checked)",
    "schedule": "schedules planned per budget (snapshot)",
    "runtime": "what users hit in practice: another step count, a batch of two, guidance branches",
    "gpu": "needs a CUDA device (skipped without one)",
    "nightly": "long-running, full-scale (nightly GPU workflow)",
}
_WORKER_KEY = "dpcache_invocation"
pytest_plugins = ["harness.sharding", "harness.plugin_table"]  # nightly fan-out; end-of-session results table


@dataclass
class BenchOptions:
    """The parsed `dpcache benchmark` options (None = the suite's default)."""

    scale: str = "tiny"
    budgets: list[int] | None = None
    methods: list[str] | None = None
    steps: int | None = None
    num_prompts: int | None = None
    device: str | None = None
    mlflow_uri: str | None = None
    experiment: str | None = None
    json_out: Path = Path("results.jsonl")
    refs_dir: Path | None = None
    update_expected: bool = False
    update_references: bool = False
    gate_timing: bool = False
    repeats: int = 5
    strict_gates: bool = False
    require_metrics: list[str] | None = None

    def strict(self, scale: str) -> bool:
        """Whether an ungated result fails: always with --strict-gates; by default at tiny scale with the
        suite's own T and prompt count (the configuration CI runs, whose baselines are committed)."""
        return self.strict_gates or (scale == "tiny" and self.steps is None and self.num_prompts is None)

    def resolved_device(self) -> str:
        """--device, else cuda when available, else cpu (imports torch)."""
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class _State:
    options: BenchOptions
    invocation_id: str
    tracker: Any = None
    stores: dict[str, Any] = field(default_factory=dict)  # reference-store root → ReferenceStore
    pending: dict[str, list[Any]] = field(default_factory=dict)  # expected.json path → records
    rewritten: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # expectations without a result (strict, complete runs)


_STATE = pytest.StashKey[_State]()


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, GROUP)
    group.addoption(
        "--scale",
        choices=SCALES,
        default="tiny",
        help="model scale: tiny (CI), medium (CPU benchmarks), full (GPU)",
    )
    group.addoption(
        "--budgets",
        default=None,
        metavar="K,K,...",
        help="budgets: full transformer computations per sample, e.g. 25,13,9",
    )
    group.addoption(
        "--methods", default=None, metavar="M,M,...", help="methods to run, e.g. full,fewer-steps,dpcache"
    )
    group.addoption("--steps", type=int, default=None, metavar="T", help="number of sampling steps T")
    group.addoption("--num-prompts", type=int, default=None, metavar="N", help="evaluation prompts per model")
    group.addoption("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    group.addoption(
        "--mlflow-uri",
        default=None,
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; 'off' disables)",
    )
    group.addoption(
        "--experiment",
        default=None,
        help="MLflow experiment (default $DPCACHE_MLFLOW_EXPERIMENT, else dpcache-<suite>-<scale>)",
    )
    group.addoption(
        "--json-out",
        default=None,
        metavar="FILE",
        help="JSON-lines file for result records (default <rootdir>/results.jsonl)",
    )
    group.addoption(
        "--refs-dir",
        default=None,
        metavar="DIR",
        help="reference store directory (default: each suite's references/)",
    )
    group.addoption(
        "--update-expected",
        action="store_true",
        help="rewrite suites' expected.json from this run's results instead of gating",
    )
    group.addoption(
        "--update-references", action="store_true", help="recompute and overwrite stored full-step references"
    )
    group.addoption(
        "--gate-timing",
        action="store_true",
        help="also enforce wall-clock gates (noise-aware, needs several samples)",
    )
    group.addoption(
        "--strict-gates",
        action="store_true",
        help="fail every result that is not gated (no baseline for its model / device class, no expectation "
        "for its config); the default at tiny scale with the suites' own T and prompt count",
    )
    group.addoption(
        "--require-metrics",
        default=None,
        metavar="M,M,...|all",
        help="fail a result that lacks any of these metrics (e.g. lpips,image_reward; 'all': every metric the "
        "run attempts), naming why each is unavailable; the nightly sets it at full scale",
    )
    group.addoption(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per record after one warm-up (default $DPCACHE_BENCH_REPEATS, else 5); 0 skips "
        "wall-clock (wall_speedup recorded unavailable; FLOPs and quality are unaffected)",
    )


def _parse_options(config: pytest.Config) -> BenchOptions:
    opt = config.option
    budgets = _csv(opt.budgets)
    try:
        parsed_budgets = [int(b) for b in budgets] if budgets else None
    except ValueError as e:
        raise pytest.UsageError(f"--budgets must be comma-separated integers, got {opt.budgets!r}") from e
    if parsed_budgets and min(parsed_budgets) < 1:
        raise pytest.UsageError("--budgets must be positive")
    for name in ("steps", "num_prompts"):
        v = getattr(opt, name)
        if v is not None and v < 1:
            raise pytest.UsageError(f"--{name.replace('_', '-')} must be >= 1")
    repeats = opt.repeats if opt.repeats is not None else int(os.environ.get("DPCACHE_BENCH_REPEATS", "5"))
    if repeats < 0:
        raise pytest.UsageError(f"--repeats must be >= 0, got {repeats}")
    if opt.gate_timing and repeats < 5:
        raise pytest.UsageError(f"--gate-timing needs >= 5 timed runs per record, got --repeats {repeats}")
    json_out = Path(opt.json_out) if opt.json_out else Path(config.rootpath) / "results.jsonl"
    return BenchOptions(
        scale=opt.scale,
        budgets=parsed_budgets,
        methods=_csv(opt.methods),
        steps=opt.steps,
        num_prompts=opt.num_prompts,
        device=opt.device,
        mlflow_uri=opt.mlflow_uri,
        experiment=opt.experiment,
        json_out=json_out.resolve(),
        refs_dir=Path(opt.refs_dir).resolve() if opt.refs_dir else None,
        update_expected=opt.update_expected,
        update_references=opt.update_references,
        gate_timing=opt.gate_timing,
        repeats=repeats,
        strict_gates=opt.strict_gates,
        require_metrics=_csv(opt.require_metrics),
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    workerinput = getattr(config, "workerinput", None)
    if workerinput:
        _pin_worker_gpu(workerinput.get("workerid", ""), config.getoption("device", None))
    if workerinput and _WORKER_KEY in workerinput:
        invocation = workerinput[_WORKER_KEY]
    else:
        invocation = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    config.stash[_STATE] = _State(_parse_options(config), invocation)


def _pin_worker_gpu(worker_id: str, device: str | None) -> None:
    """One GPU per xdist worker: worker gwN sees only GPU N (mod the GPUs listed in CUDA_VISIBLE_DEVICES,
    or DPCACHE_NUM_GPUS). Runs before torch is imported in the worker; only with --device cuda."""
    if not device or not device.startswith("cuda") or not worker_id.startswith("gw"):
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = (
        visible.split(",")
        if visible
        else [str(i) for i in range(int(os.environ.get("DPCACHE_NUM_GPUS", "1")))]
    )
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[int(worker_id[2:]) % len(gpus)]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker shares the controller's invocation id (one MLflow parent per model)."""
    node.workerinput[_WORKER_KEY] = node.config.stash[_STATE].invocation_id


def pytest_report_header(config: pytest.Config) -> str:
    o = config.stash[_STATE].options
    return f"dpcache: scale={o.scale} budgets={o.budgets or 'suite'} methods={o.methods or 'suite'} steps={o.steps or 'suite'}"


@pytest.hookimpl(trylast=True)  # after the suites' conftests have added their xdist_group markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from harness.plugin_xdist import regroup_for_xdist

    regroup_for_xdist(config, items)
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    if not gpu_items:
        return
    device = config.stash[_STATE].options.device
    if device is None:
        import torch

        has_cuda = torch.cuda.is_available()
    else:
        has_cuda = device.startswith("cuda")
    if not has_cuda:
        skip = pytest.mark.skip(reason="gpu test: no CUDA device (or --device is not cuda)")
        for item in gpu_items:
            item.add_marker(skip)


def bench_params(
    model: str, methods: Iterable[str], budgets: Sequence[int | None], **marks: Any
) -> list[Any]:
    """`pytest.param`s for method × budget with ids `<model>-<method>-K<budget>` and an `xdist_group`
    mark per model (run with `--dist loadgroup` so a model loads once per worker)."""
    params = []
    for method in methods:
        for budget in budgets:
            pid = f"{model}-{method}" + (f"-K{budget}" if budget is not None else "")
            params.append(
                pytest.param(method, budget, id=pid, marks=[pytest.mark.xdist_group(model), *marks.values()])
            )
    return params


@pytest.fixture(scope="session")
def bench_options(pytestconfig: pytest.Config) -> BenchOptions:
    """The parsed `dpcache benchmark` command-line options."""
    return pytestconfig.stash[_STATE].options


@pytest.fixture(scope="session")
def tracker(pytestconfig: pytest.Config) -> Any:
    """The session's `harness.tracking.Tracker` (JSON lines + MLflow), one per xdist worker."""
    from harness.tracking import Tracker

    state = pytestconfig.stash[_STATE]
    if state.tracker is None:
        o = state.options
        state.tracker = Tracker(
            o.json_out, mlflow_uri=o.mlflow_uri, experiment=o.experiment, invocation_id=state.invocation_id
        )
    yield state.tracker
    state.tracker.close()


@pytest.fixture
def reference_store(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Any:
    """The `harness.references.ReferenceStore` for this test: --refs-dir, else `references/` next to the
    test file; with --update-references each key is recomputed once per session (per worker)."""
    from harness.references import ReferenceStore

    state = pytestconfig.stash[_STATE]
    root = state.options.refs_dir or Path(request.node.path).parent / "references"
    key = str(Path(root).resolve())
    if key not in state.stores:
        state.stores[key] = ReferenceStore(root, refresh=state.options.update_references)
    return state.stores[key]


@pytest.fixture
def gate(request: pytest.FixtureRequest, tracker: Any, pytestconfig: pytest.Config) -> Any:
    """Call `gate(record, *, expected_path=None, images=None, artifacts=(), metrics=None, log=True)`: records
    the result through the tracker (unless `log=False`), then fails the test with the gate messages of
    `metrics` (all when None) against the baseline of the record's model (and device class for wall-clock) in
    expected.json (next to the test file by default). A result without a baseline is reported UNGATED, by
    name, and fails when gates are strict. With --update-expected the file is rewritten at session end."""
    state = pytestconfig.stash[_STATE]

    def _gate(
        record: Any,
        *,
        expected_path: str | os.PathLike[str] | None = None,
        images: Any = None,
        artifacts: Sequence[Any] = (),
        metrics: Iterable[str] | None = None,
        log: bool = True,
    ) -> list[Any]:
        from harness.gates import evaluate, missing_required

        if log:
            tracker.log(record, images=images, artifacts=artifacts)
        path = Path(expected_path) if expected_path else Path(request.node.path).parent / "expected.json"
        info = record_info(record, path)
        if tracker.mlflow_error:
            info["mlflow_error"] = tracker.mlflow_error
        request.node.user_properties.append(("dpcache_record", info))
        from harness.plugin_table import ROW_KEY, result_row

        request.node.user_properties.append((ROW_KEY, result_row(record, path)))
        if state.options.update_expected:
            state.pending.setdefault(str(path), []).append(record)
            return []
        verdict = evaluate(record, path, metrics=metrics, gate_timing=state.options.gate_timing)
        missing = missing_required(record, state.options.require_metrics or [])
        if missing:
            lines = "\n".join(f"  {m}" for m in missing)
            pytest.fail(
                f"dpcache: {record.test_id} lacks required metrics (--require-metrics):\n{lines}", False
            )
        info["gated"], info["ungated"] = verdict.gated, verdict.ungated
        if verdict.failures:
            lines = "\n".join(f"  {f.message}" for f in verdict.failures)
            run = record.provenance.mlflow_run_id
            where = f"{path}; MLflow run {run}" if run else f"{path}; not in MLflow"
            pytest.fail(f"dpcache gate failed for {record.test_id} ({where}):\n{lines}", pytrace=False)
        if verdict.ungated and state.options.strict(record.identity.scale):
            lines = "\n".join(f"  UNGATED: {u}" for u in verdict.ungated)
            pytest.fail(f"dpcache: {record.test_id} is not gated (strict gates):\n{lines}", pytrace=False)
        return verdict.failures

    return _gate


def report_ungated(request: pytest.FixtureRequest, test_id: str, reason: str, *, scale: str) -> None:
    """A check without a baseline (e.g. a schedule snapshot): listed UNGATED in the summary, by name; fails
    when gates are strict."""
    state = request.config.stash[_STATE]
    request.node.user_properties.append(("dpcache_ungated", {"test_id": test_id, "reason": reason}))
    if state.options.strict(scale) and not state.options.update_expected:
        pytest.fail(f"dpcache: {test_id} is not gated (strict gates): UNGATED: {reason}", pytrace=False)


from harness.plugin_summary import (  # noqa: E402  (hooks registered with this plugin)
    pytest_sessionfinish,
    pytest_terminal_summary,
    record_info,
)

__all__ = [
    "BenchOptions",
    "bench_params",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
    "report_ungated",
]
