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

from harness.plugin import bench_params

SPEED_METRICS = ("flops_speedup", "wall_speedup")
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
    methods: tuple[str, ...] = ("full", "fewer-steps", "dpcache", "teacache", "taylorseer", "fora")
    budgets: dict[str, tuple[int, ...]] = field(default_factory=lambda: {"*": DEFAULT_BUDGETS})
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
        params = []
        for m in methods:
            params += bench_params(model, [m], [t] if m == "full" else budgets)
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
        if not ok:
            pytest.skip(f"{spec.name} unavailable: {reason}")
    torch.set_num_threads(int(os.environ.get("DPCACHE_THREADS", "1")))
    root = Path(config.rootpath)
    refs = bench_options.refs_dir or suite.references_dir
    cache = root / ".dpcache-cache"
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
    )
    session.committed_store = ReferenceStore(refs)
    session.logged = set()
    session.suite_def = suite
    return session


def result(session: Any, method: str, budget: int) -> Any:
    """The session's record of (method, budget), or skip with the reason it cannot run."""
    from harness.methods import UnreachableBudget

    ok, why = session.supports(method)
    if not ok:
        pytest.skip(f"{method} does not support {session.spec.family}: {why}")
    try:
        return session.record(method, budget)
    except UnreachableBudget as e:
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


def load_schedules(suite: Suite) -> dict[str, Any]:
    path = suite.schedules_file
    return json.loads(path.read_text()) if path.is_file() else {}


def update_schedule(
    suite: Suite, model: str, steps_key: str, weights: str, budget: int, steps: list[int]
) -> None:
    """Write one planned schedule into the suite's snapshot (file-locked, atomic: xdist workers share it)."""
    from filelock import FileLock

    lock = os.path.join(tempfile.gettempdir(), f"dpcache-{suite.name}-schedules.lock")
    with FileLock(lock):
        data = load_schedules(suite)
        entry = data.setdefault(model, {}).setdefault(steps_key, {"weights": weights, "schedules": {}})
        if entry.get("weights") != weights:
            entry["schedules"] = {}
        entry["weights"] = weights
        entry["schedules"][str(budget)] = steps
        tmp = suite.schedules_file.with_suffix(f".{os.getpid()}.tmp")
        text = json.dumps(data, indent=2, sort_keys=True)
        tmp.write_text(re.sub(r"\[[\d,\s]+\]", lambda m: json.dumps(json.loads(m[0])), text) + "\n")
        os.replace(tmp, suite.schedules_file)
