"""The method registry the harness runs: full, fewer-steps, dpcache and every registered baseline, each
configured at a budget K (full transformer computations per sample) on one model context."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from dpcache.atomic_io import write_text_atomic
from harness.budget import BudgetMatch, cached_search, knob_signature, search_method
from harness.context import (  # noqa: F401  (re-exported: the registry's public surface)
    DEFAULT_CACHE_DIR,
    ModelContext,
    PromptOverlapError,
    check_prompts_disjoint,
    counting_transformer,
    pipeline_weights_hash,
)
from harness.knob_search import KnobSearch, knob_search
from harness.method_base import BenchMethod, Configured, UnreachableBudget
from harness.methods_dpcache import (  # noqa: F401  (public surface)
    DPCACHE_FIRST_FULL,
    DPCACHE_ORDER,
    DPCACHE_SOLVER,
    TUNE_ORDERS,
    DPCacheMethod,
    DPCacheTunedMethod,
)
from harness.records import config_tag

CORE_METHODS = ("full", "fewer-steps", "dpcache")


# the name a table shows where the registry name alone would mislead (issue 19): OmniCache has no public code
DISPLAY_NAMES = {"omnicache": "omnicache (re-impl.)"}


def display_name(method: str) -> str:
    """The name tables and reports show for a registry method name (`omnicache` → `omnicache (re-impl.)`)."""
    return DISPLAY_NAMES.get(method, method)


class FullMethod(BenchMethod):
    name, knob = "full", "-"
    description = "every step at full compute (the reference)"

    def configure(self, ctx: ModelContext, budget: int | None = None) -> Configured:
        t = ctx.num_steps
        return Configured("full", t, t, config_tag("full", t), schedule=list(range(t)))


class FewerStepsMethod(BenchMethod):
    name, knob = "fewer-steps", "num_inference_steps"
    description = "the same pipeline run with K steps (the honest floor every cache must beat)"

    def configure(self, ctx: ModelContext, budget: int) -> Configured:
        return Configured("fewer-steps", budget, budget, config_tag("fewer-steps", budget))


class BaselineMethod(BenchMethod):
    """A `baselines.base.CacheMethod`, its knob searched so the measured compute matches K (±5%)."""

    def __init__(self, method: Any, search: KnobSearch | None = None) -> None:
        self.method = method
        self.search = search or knob_search(method.name)
        self.name, self.knob = method.name, method.knob
        self.description = (method.origin or "").split("\n")[0][:80]
        # measured compute per (model context key, knob value): the K = 9 search reuses the K = 13 search's
        # probes (a probe's compute does not depend on the budget searched for)
        self._probes: dict[tuple[str, float], float] = {}

    def supports(self, family: str) -> tuple[bool, str]:
        return self.method.supports(family)

    def artifacts(self, ctx: ModelContext) -> dict:
        """The method's calibration artifacts (JSON, cached per model), or {} if it has none."""
        if self.method.calibrate is None:
            return {}
        from filelock import FileLock

        from baselines.base import Calibration

        out_dir = ctx.cache_dir / "baselines" / self.name
        path = out_dir / f"{ctx.key('artifacts')}.json"
        if path.is_file():
            return json.loads(path.read_text())
        out_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=7200):
            if path.is_file():
                return json.loads(path.read_text())

            def run_prompts() -> None:
                for i, p in enumerate(ctx.calibration_prompts):
                    ctx.call(p, 42 + i)

            data = self.method.calibrate(
                ctx.pipe, Calibration(ctx.spec.name, ctx.num_steps, run_prompts, out_dir)
            )
            write_text_atomic(path, json.dumps(data, sort_keys=True))
            return data

    def prepare(self, ctx: ModelContext) -> None:
        self.artifacts(ctx)

    def _measure(self, ctx: ModelContext, artifacts: dict) -> Callable[[float], float]:
        m = self.method
        n = min(len(ctx.calibration_prompts), max(1, ctx.search_prompts))
        scope = ctx.key(self.name, knob_signature(m, self.search), f"n{n}")

        def measure(value: float) -> float:
            if (scope, value) not in self._probes:
                self._probes[scope, value] = ctx.search_compute(
                    lambda: m.apply(ctx.pipe, value, ctx.num_steps, artifacts),
                    lambda: m.remove(ctx.pipe),
                    label=f"{m.name} {m.knob}={value:g}",
                )
            return self._probes[scope, value]

        return measure

    def match(self, ctx: ModelContext, budget: int) -> BudgetMatch:
        """The knob value for K (searched on the calibration prompts; cached in `<cache>/budgets.json`)."""
        artifacts = self.artifacts(ctx)
        m = self.method
        n = min(len(ctx.calibration_prompts), max(1, ctx.search_prompts))
        key = ctx.key(self.name, knob_signature(m, self.search), f"K{budget}", f"n{n}")
        return cached_search(
            ctx.cache_dir / "budgets.json",
            key,
            lambda: search_method(m, self._measure(ctx, artifacts), budget, search=self.search),
        )

    def configure(self, ctx: ModelContext, budget: int) -> Configured:
        result = self.match(ctx, budget)
        if not result.reachable:
            raise UnreachableBudget(result.message, result)
        artifacts, m, value = self.artifacts(ctx), self.method, result.value
        return Configured(
            self.name,
            budget,
            ctx.num_steps,
            config_tag(self.name, budget),
            apply=lambda: m.apply(ctx.pipe, value, ctx.num_steps, artifacts),
            remove=lambda: m.remove(ctx.pipe),
            cache_hits=lambda: m.cache_hits(ctx.pipe),
            knobs={m.knob: value, "measured_K": round(result.measured or 0.0, 4)},
            is_cache=True,
            adaptive=True,
            match=result,
        )


class BaselineImportError(ImportError):
    """A baseline module listed in `baselines.base._MODULES` could not be imported: the harness stops and
    names it (running `--methods all` without it would silently drop every baseline)."""

    def __init__(self, module: str, exc: BaseException) -> None:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        super().__init__(
            f"baseline module baselines.{module} failed to import: {type(exc).__name__}: {detail}"
        )
        self.module = module


def load_baselines() -> dict[str, Any]:
    """Every registered baseline; `BaselineImportError` naming the module when one fails to import (a missing
    file included: every module `baselines.base._MODULES` lists is expected to exist)."""
    import importlib

    from baselines import base

    for module in base._MODULES:
        try:
            importlib.import_module(f"baselines.{module}")
        except Exception as exc:
            raise BaselineImportError(module, exc) from exc
    return base.load_all()


def registry() -> dict[str, BenchMethod]:
    """Every method by name: the three core methods, then every `baselines.base.load_all()` entry."""
    out: dict[str, BenchMethod] = {
        "full": FullMethod(),
        "fewer-steps": FewerStepsMethod(),
        "dpcache": DPCacheMethod(),
        # the exact minimum of the path cost (not of the image error): a named variant, not the release
        "dpcache-exact": DPCacheMethod(solver="exact", name="dpcache-exact"),
        # every setting tuned per model and budget on the calibration prompts by the final output
        "dpcache-tuned": DPCacheTunedMethod(),
        # the predictor's order is the released method's one free choice that the planner cannot make
        # (each order has its own cost tensor); run these next to `dpcache` to pick one per model
        "dpcache-o1": DPCacheMethod(order=1, name="dpcache-o1"),
        "dpcache-o0": DPCacheMethod(order=0, name="dpcache-o0"),
    }
    baselines = load_baselines()
    for name, method in sorted(baselines.items()):
        if name not in out:
            out[name] = BaselineMethod(method)
    return out


def resolve_methods(names: str | Sequence[str] | None, default: Sequence[str] = CORE_METHODS) -> list[str]:
    """`all` → every registered method; `a,b` or a list → those (ValueError naming unknown ones)."""
    known = registry()
    if names is None:
        return list(default)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if list(names) == ["all"]:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if not names:
        raise ValueError("no methods given")
    return list(dict.fromkeys(names))
