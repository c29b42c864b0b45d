"""What every suite shares: its definition, the method × budget parametrisation, the session fixture body,
result lookup, gating and the schedule snapshot. Each `suites/<name>/conftest.py` declares one `Suite`."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dpcache.atomic_io import write_text_atomic
from harness.plugin import bench_params

SPEED_METRICS = ("flops_speedup", "wall_speedup", "flops")  # flops: the full run's absolute FLOPs
QUALITY_METRICS = ("psnr", "ssim", "ms_ssim", "lpips", "adherence", "clip_score", "image_reward")
# ≈ 2×, 3.85× and 5.56× fewer transformer computations than T = 50
DEFAULT_BUDGETS = (25, 13, 9)


@dataclass(frozen=True)
class Suite:
    """One suite: the model per `--scale`, what runs by default, and where its snapshots live.

    `budgets` maps a scale to its default budgets (`"*"` for the rest); `methods` are the defaults when
    `--methods` is not given (`all` = every registered method that supports the family).
    """

    name: str
    directory: Path
    models: dict[str, str]
    # the CI default: the core methods and three competitors (a diffusers-wrapped one, a ported threshold
    # one, a ported interval one) that fit the 2-core CI budget; `--methods all` runs every applicable one
    methods: tuple[str, ...] = (
        "full",
        "fewer-steps",
        "dpcache",
        "dpcache-tuned",
        "teacache",
        "taylorseer",
        "fora",
    )
    budgets: dict[str, tuple[int, ...]] = field(default_factory=lambda: {"*": DEFAULT_BUDGETS})
    # methods swept over every default budget; the others run by default only at budgets <= mismatch_budget
    # (13 and 9, the budgets the comparisons are about), which keeps CI under 30 minutes on 2 cores
    # (dpcache-tuned's search and the competitors' knob searches cost most at K = 25); `--budgets` runs any
    # method at any budget
    sweep_methods: tuple[str, ...] = ("fewer-steps", "dpcache")
    num_prompts: int = 8
    num_calibration: int = 4
    mismatch_budget: int = 13  # the budget the step-count and batch tests run at

    def model(self, config: pytest.Config) -> str:
        return self.models[config.getoption("--scale")]

    def steps(self, config: pytest.Config) -> int:
        from harness.zoo.registry import get_spec

        return config.getoption("--steps") or get_spec(self.model(config)).num_inference_steps

    def default_budgets(self, config: pytest.Config) -> tuple[int, ...]:
        return self.budgets.get(config.getoption("--scale"), self.budgets["*"])

    def tight(self, budgets: list[int]) -> list[int]:
        """The default budgets a method outside `sweep_methods` runs at."""
        return [b for b in budgets if b <= self.mismatch_budget]

    @property
    def schedules_file(self) -> Path:
        return self.directory / "schedules.json"

    @property
    def references_dir(self) -> Path:
        return self.directory / "references"


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def generate_tests(suite: Suite, metafunc: pytest.Metafunc) -> None:
    """Parametrise `method`/`budget` (ids `<model>-<method>-K<k>`) and `prompt_index` for one suite."""
    from harness.methods import check_prompts_disjoint, resolve_methods
    from harness.zoo.registry import get_spec

    config = metafunc.config
    model = suite.model(config)
    spec = get_spec(model)
    # fail collection, not a test, when the prompt sets overlap
    check_prompts_disjoint(spec.calibration_prompts, spec.evaluation_prompts, model)
    t = suite.steps(config)
    budgets = [int(b) for b in _csv(config.getoption("--budgets")) or suite.default_budgets(config)]
    if {"method", "budget"} <= set(metafunc.fixturenames):
        methods = resolve_methods(config.getoption("--methods"), suite.methods)
        explicit = _csv(config.getoption("--budgets")) is not None
        params = []
        for m in methods:
            mine = budgets if explicit or m in suite.sweep_methods else suite.tight(budgets)
            params += bench_params(model, [m], [t] if m == "full" else mine)
        metafunc.parametrize(("method", "budget"), params)
    elif "budget" in metafunc.fixturenames:
        params = bench_params(model, ["dpcache"], budgets)
        metafunc.parametrize("budget", [p.values[1] for p in params], ids=[p.id for p in params])
    if "prompt_index" in metafunc.fixturenames:
        n = config.getoption("--num-prompts") or suite.num_prompts
        metafunc.parametrize("prompt_index", range(n), ids=[f"{model}-prompt{i}" for i in range(n)])


def group_items(suite: Suite, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep one model's tests on one xdist worker (`--dist loadgroup`): it loads and calibrates once."""
    model = suite.model(config)
    for item in items:
        if suite.directory in Path(item.path).parents and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(model))


def open_session(suite: Suite, bench_options: Any, config: pytest.Config) -> Any:
    """The suite model's `BenchSession` (skips with the registry's reason when its weights are absent)."""
    import torch

    from harness.context import resolve_cache_dir
    from harness.references import ReferenceStore
    from harness.runner import BenchSession
    from harness.zoo.registry import availability, get_spec

    spec = get_spec(suite.model(config))
    pipe = None
    if os.environ.get("DPCACHE_RANDOM_WEIGHTS") == "1" and spec.builder:  # smoke runs before training
        import importlib

        size = "medium" if spec.scale == "medium" else "tiny"
        pipe = importlib.import_module(spec.builder).build_pipeline(seed=0, trained=False, size=size)
    else:
        ok, reason = availability(spec)
        if not ok and spec.scale == "tiny":  # committed weights: their absence is a failure, never a skip
            pytest.fail(
                f"{spec.name} unavailable although its weights are committed: {reason}", pytrace=False
            )
        if not ok:
            pytest.skip(f"{spec.name} unavailable: {reason}")
    torch.set_num_threads(int(os.environ.get("DPCACHE_THREADS", "1")))
    root = Path(config.rootpath)
    refs = bench_options.refs_dir or suite.references_dir
    cache = resolve_cache_dir(config.getoption("dpcache_cache_dir", None), root)  # --cache-dir or env
    if bench_options.update_references:
        store, committed = ReferenceStore(refs, refresh=True), None
    else:
        store, committed = ReferenceStore(cache / "references" / spec.name), ReferenceStore(refs)
    session = BenchSession(
        spec,
        pipe,
        steps=bench_options.steps,
        num_prompts=bench_options.num_prompts or suite.num_prompts,
        num_calibration=suite.num_calibration,
        repeats=bench_options.repeats,
        store=store,
        committed=committed,
        cache_dir=cache,
        device=bench_options.resolved_device(),
        suite=suite.name,
        progress=False,
        default_prompts=suite.num_prompts,
    )
    session.committed_store = ReferenceStore(refs)
    session.logged = set()
    session.suite_def = suite
    return session


def committed(session: Any, method: str, budget: int) -> str | None:
    """The expectation file holding (method, K) for the session's model and T/prompt variant, or None."""
    from harness.gates import expected_configs

    path = session.suite_def.directory / "expected.json"
    configs = expected_configs(path, session.spec.name) or {}
    return str(path) if session.tag(method, budget) in configs else None


def result(session: Any, method: str, budget: int, tracker: Any = None) -> Any:
    """The session's record of (method, budget). A configuration that cannot run fails with the reason when
    an expectation is committed for it (it became unreachable or unplannable); otherwise it is skipped with
    the reason, and a not-run record (reason, measured floor) goes to the tracker once."""
    from harness.methods import UnreachableBudget

    ok, why = session.supports(method)
    if not ok:
        pytest.skip(f"{method} does not support {session.spec.family}: {why}")
    try:
        return session.record(method, budget)
    except UnreachableBudget as e:
        where = committed(session, method, budget)
        if where:
            pytest.fail(
                f"{session.spec.name} {session.tag(method, budget)} has a committed expectation in {where} but "
                f"can no longer run: {e}",
                pytrace=False,
            )
        gone = session.not_run(method, budget, e)
        if tracker is not None and gone.test_id not in session.logged:
            session.logged.add(gone.test_id)
            tracker.log(gone, plot=False)
        pytest.skip(str(e))


def gate_record(session: Any, gate: Any, record: Any, metrics: tuple[str, ...]) -> None:
    """Gate `metrics` of `record`; the record goes to the tracker once per session (first test of it)."""
    first = record.config_tag not in session.logged
    session.logged.add(record.config_tag)
    arts = []
    if first and record.method == "dpcache":
        plots = session.ctx.cache_dir / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        arts = [str(session.heatmap(plots / f"{session.spec.name}-T{session.ctx.num_steps}-cost.png"))]
    gate(
        record,
        images=session.images.get(record.config_tag) if first else None,
        artifacts=arts,
        metrics=metrics,
        log=first,
    )


def suite_hooks(suite: Suite) -> tuple[Any, Any, Any]:
    """A suite conftest's three members, bound to `suite`: `pytest_generate_tests`,
    `pytest_collection_modifyitems` and the session fixture `suite_session`."""

    def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
        generate_tests(suite, metafunc)

    # tryfirst: xdist's worker turns the xdist_group marker into the `@group` node-id suffix in this same
    # hook; conftests load before xdist's worker plugin, so without it the marker would come too late
    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
        group_items(suite, config, items)

    @pytest.fixture(scope="session", name="suite_session")
    def suite_session(bench_options: Any, pytestconfig: pytest.Config) -> Any:
        """The suite model's `BenchSession`; skips with the registry's reason when its weights are absent."""
        return open_session(suite, bench_options, pytestconfig)

    return pytest_generate_tests, pytest_collection_modifyitems, suite_session


SCHEDULES_SCHEMA = (
    2  # {"schema": 2, "models": {model: {"T<steps>": {"weights": ..., "schedules": {K: steps}}}}}
)


class SchedulesFormatError(ValueError):
    """schedules.json does not follow its schema (the message names the file)."""


def load_schedules(suite: Suite) -> dict[str, Any]:
    """The suite's schedule snapshots by model, validated (`{}` when the file does not exist)."""
    path = suite.schedules_file
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise SchedulesFormatError(f"{path}: not valid JSON ({e})") from None
    if (
        not isinstance(data, dict)
        or data.get("schema") != SCHEDULES_SCHEMA
        or not isinstance(data.get("models"), dict)
    ):
        raise SchedulesFormatError(f"{path}: not a schedules file of schema {SCHEDULES_SCHEMA}")
    for model, by_t in data["models"].items():
        for t, entry in by_t.items() if isinstance(by_t, dict) else [("?", None)]:
            sched = entry.get("schedules") if isinstance(entry, dict) else None
            ok = isinstance(sched, dict) and all(
                isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                for v in sched.values()
            )
            if not ok or not isinstance(entry.get("weights"), str):
                raise SchedulesFormatError(
                    f"{path}: models.{model}.{t} needs 'weights' and integer 'schedules'"
                )
    return data["models"]


def update_schedule(
    suite: Suite, model: str, steps_key: str, weights: str, budget: int, steps: list[int]
) -> None:
    """Write one planned schedule into the suite's snapshot (file-locked, atomic: xdist workers share it)."""
    from filelock import FileLock

    lock = os.path.join(tempfile.gettempdir(), f"dpcache-{suite.name}-schedules.lock")
    with FileLock(lock):
        models = load_schedules(suite)
        entry = models.setdefault(model, {}).setdefault(steps_key, {"weights": weights, "schedules": {}})
        if entry.get("weights") != weights:
            entry["schedules"] = {}
        entry["weights"] = weights
        entry["schedules"][str(budget)] = steps
        write_schedules(suite.schedules_file, models)


def write_schedules(path: Path, models: dict[str, Any]) -> None:
    """Atomically write the snapshot (schema 2), one line per schedule."""
    text = json.dumps({"schema": SCHEDULES_SCHEMA, "models": models}, indent=2, sort_keys=True)
    write_text_atomic(path, re.sub(r"\[[\d,\s]+\]", lambda m: json.dumps(json.loads(m[0])), text) + "\n")
