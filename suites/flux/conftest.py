"""FLUX suite fixtures: the model per --scale, one benchmark session per model (calibration, references and
sampling done once, cached on disk), and the method × budget parametrisation with ids `<model>-<method>-K<k>`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.plugin import bench_params

SUITE = "flux"
SUITE_DIR = Path(__file__).resolve().parent
MODELS = {"tiny": "flux-tiny", "medium": "flux-medium", "full": "flux-dev"}
DEFAULT_METHODS = ("full", "fewer-steps", "dpcache")
DEFAULT_BUDGETS = (25, 13, 9)
DEFAULT_PROMPTS = 8
DEFAULT_CALIBRATION = 4
SCHEDULES = SUITE_DIR / "schedules.json"
SPEED_METRICS = ("flops_speedup", "wall_speedup")
QUALITY_METRICS = ("psnr", "ssim", "ms_ssim", "lpips", "adherence", "clip_score", "image_reward")


def suite_model(config: pytest.Config) -> str:
    return MODELS[config.getoption("--scale")]


def suite_steps(config: pytest.Config) -> int:
    from harness.zoo.registry import get_spec

    return config.getoption("--steps") or get_spec(suite_model(config)).num_inference_steps


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    from harness.methods import check_prompts_disjoint, resolve_methods
    from harness.zoo.registry import get_spec

    config = metafunc.config
    model = suite_model(config)
    spec = get_spec(model)
    # fail collection, not a test, when the prompt sets overlap
    check_prompts_disjoint(spec.calibration_prompts, spec.evaluation_prompts, model)
    t = suite_steps(config)
    budgets = [int(b) for b in _csv(config.getoption("--budgets")) or DEFAULT_BUDGETS]
    if {"method", "budget"} <= set(metafunc.fixturenames):
        methods = resolve_methods(config.getoption("--methods"), DEFAULT_METHODS)
        params = []
        for m in methods:
            params += bench_params(model, [m], [t] if m == "full" else budgets)
        metafunc.parametrize(("method", "budget"), params)
    elif "budget" in metafunc.fixturenames:
        metafunc.parametrize("budget", [p.values[1] for p in bench_params(model, ["dpcache"], budgets)],
                             ids=[p.id for p in bench_params(model, ["dpcache"], budgets)])
    if "prompt_index" in metafunc.fixturenames:
        n = config.getoption("--num-prompts") or DEFAULT_PROMPTS
        metafunc.parametrize("prompt_index", range(n), ids=[f"{model}-prompt{i}" for i in range(n)])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    model = suite_model(config)
    for item in items:
        if SUITE_DIR in Path(item.path).parents and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(model))


@pytest.fixture(scope="session")
def flux_session(bench_options: Any, pytestconfig: pytest.Config) -> Any:
    """The suite model's `BenchSession` (skips with the registry's reason when its weights are absent)."""
    import torch

    from harness.references import ReferenceStore
    from harness.runner import BenchSession
    from harness.zoo.registry import availability, get_spec

    spec = get_spec(suite_model(pytestconfig))
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
    root = Path(pytestconfig.rootpath)
    refs = bench_options.refs_dir or SUITE_DIR / "references"
    cache = root / ".dpcache-cache"
    if bench_options.update_references:
        store, committed = ReferenceStore(refs, refresh=True), None
    else:
        store, committed = ReferenceStore(cache / "references" / spec.name), ReferenceStore(refs)
    session = BenchSession(
        spec, pipe, steps=bench_options.steps, num_prompts=bench_options.num_prompts or DEFAULT_PROMPTS,
        num_calibration=DEFAULT_CALIBRATION, repeats=int(os.environ.get("DPCACHE_BENCH_REPEATS", "5")),
        store=store, committed=committed, cache_dir=cache, device=bench_options.resolved_device(), suite=SUITE,
        progress=False,
    )
    session.committed_store = ReferenceStore(refs)
    session.logged = set()
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
    gate(record, images=session.images.get(record.config_tag) if first else None, artifacts=arts,
         metrics=metrics, log=first)


def load_schedules() -> dict[str, Any]:
    return json.loads(SCHEDULES.read_text()) if SCHEDULES.is_file() else {}
