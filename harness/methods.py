"""The method registry the harness runs: full, fewer-steps, dpcache and every registered baseline, each
configured at a budget K (full transformer computations per sample) on one model context."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.budget import BudgetMatch, cached_search, knob_signature, search_method, search_schedule_size
from harness.context import (  # noqa: F401  (re-exported: the registry's public surface)
    DEFAULT_CACHE_DIR,
    ModelContext,
    PromptOverlapError,
    check_prompts_disjoint,
    counting_transformer,
    pipeline_weights_hash,
)
from harness.records import config_tag

CORE_METHODS = ("full", "fewer-steps", "dpcache")
DPCACHE_FIRST_FULL = 3
DPCACHE_ORDER = 2
DPCACHE_SOLVER = "official"  # the released recurrence, so `dpcache` reproduces the paper
TUNE_ORDERS = (2, 1, 0)


# the name a table shows where the registry name alone would mislead (issue 19): OmniCache has no public code
DISPLAY_NAMES = {"omnicache": "omnicache (re-impl.)"}


def display_name(method: str) -> str:
    """The name tables and reports show for a registry method name (`omnicache` → `omnicache (re-impl.)`)."""
    return DISPLAY_NAMES.get(method, method)


class UnreachableBudget(RuntimeError):
    """A method cannot be configured at this budget; `match` says which budgets it can hit."""

    def __init__(self, message: str, match: BudgetMatch | None = None) -> None:
        super().__init__(message)
        self.match = match


@dataclass
class Configured:
    """A method configured at one budget: apply/remove it, sample with `num_steps`, read its cache hits."""

    method: str
    budget: int | None
    num_steps: int
    config_tag: str
    apply: Callable[[], None] = lambda: None
    remove: Callable[[], None] = lambda: None
    cache_hits: Callable[[], int | None] = lambda: None
    knobs: dict[str, Any] = field(default_factory=dict)
    schedule: list[int] | None = None
    is_cache: bool = False
    adaptive: bool = False  # compute depends on the prompt (threshold methods)
    match: BudgetMatch | None = None
    artifacts: list[str] = field(default_factory=list)


class BenchMethod:
    """Base of the registry entries: name, the families it runs on, its knob, `configure(ctx, K)`."""

    name = ""
    knob = ""
    description = ""

    def supports(self, family: str) -> tuple[bool, str]:
        return True, ""

    def prepare(self, ctx: ModelContext) -> None:
        """Per-model work done once (calibration); cached on disk."""

    def configure(self, ctx: ModelContext, budget: int) -> Configured:
        raise NotImplementedError


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


class DPCacheMethod(BenchMethod):
    name, knob = "dpcache", "key steps (sized so the measured compute is K)"
    description = "DPCache as released: path-aware cost tensor, the released DP recurrence, Taylor O2, M3"

    def __init__(
        self,
        first_full_steps: int = DPCACHE_FIRST_FULL,
        order: int = DPCACHE_ORDER,
        name: str = "dpcache",
        solver: str = DPCACHE_SOLVER,
    ) -> None:
        self.first_full_steps, self.order, self.name, self.solver = first_full_steps, order, name, solver
        if order != DPCACHE_ORDER:
            self.description = (
                f"DPCache with a Taylor predictor of order {order} (released: {DPCACHE_ORDER}); its cost "
                f"tensor is calibrated for that order"
            )
        if solver != DPCACHE_SOLVER:
            self.description = f"DPCache planned with the {solver!r} solver (released: {DPCACHE_SOLVER!r})"

    def settings(self, ctx: ModelContext) -> tuple[int, int]:
        """(first_full_steps, last_full_steps) for this model: the spec's released settings (Wan I2V: 4, 1)
        override this method's defaults (FLUX's released 3, 0)."""
        own = getattr(ctx.spec, "dpcache", None) or {}
        return int(own.get("first_full_steps", self.first_full_steps)), int(own.get("last_full_steps", 0))

    def supports(self, family: str) -> tuple[bool, str]:
        return True, ""

    def cost_path(self, ctx: ModelContext) -> Path:
        n, (first, last) = len(ctx.calibration_prompts), self.settings(ctx)
        tag = ctx.key(
            "taylor", f"o{self.order}", f"n{n}", *([f"m{first}l{last}"] if (first, last) != (3, 0) else [])
        )
        return ctx.cache_dir / "dpcache" / f"{tag}.safetensors"

    def cost_tensor(self, ctx: ModelContext) -> Any:
        """The model's cost tensor: calibrated once per model + T + predictor, then reused from disk."""
        from filelock import FileLock

        from dpcache import CostTensor, TaylorPredictor, calibrate

        path = self.cost_path(ctx)
        if path.is_file():
            return CostTensor.load(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=7200):
            if path.is_file():
                return CostTensor.load(path)
            first, last = self.settings(ctx)
            return calibrate(
                ctx.pipe,
                list(ctx.calibration_prompts),
                num_inference_steps=ctx.num_steps,
                predictor=TaylorPredictor(order=self.order),
                model_id=ctx.spec.name,
                prompt_to_kwargs=lambda p: ctx.kwargs(p),
                work_dir=path.parent / f"{path.stem}.parts",
                first_full_steps=first,
                last_full_steps=last,
                progress=ctx.progress,
                out=path,
            )

    def prepare(self, ctx: ModelContext) -> None:
        self.cost_tensor(ctx)

    def plan_steps(self, ctx: ModelContext, k: int) -> list[int]:
        """The k key steps this method's solver plans on the model's cost tensor."""
        from dpcache import plan

        first, last = self.settings(ctx)
        sched = plan(
            self.cost_tensor(ctx), k, first_full_steps=first, last_full_steps=last, solver=self.solver
        )
        return list(sched.key_steps)

    def _config(self, ctx: ModelContext, steps: list[int]) -> Any:
        from dpcache import DPCacheConfig

        first, last = self.settings(ctx)
        return DPCacheConfig(
            num_inference_steps=ctx.num_steps,
            schedule=steps,
            first_full_steps=first,
            last_full_steps=last,
            order=self.order,
        )

    def match(self, ctx: ModelContext, budget: int) -> BudgetMatch:
        """How many key steps put DPCache's measured compute at K (the non-block work of the transformer runs
        at every step, so on models where it is a large share K key steps cost more than K computations).
        Measured on the calibration prompts like the baselines' knob searches; cached in `budgets.json`."""
        from dpcache import apply_dpcache, remove_dpcache
        from dpcache.errors import DPCacheError
        from dpcache.planner import mandatory_steps

        first, last = self.settings(ctx)

        def measure(k: int) -> float | None:
            try:
                cfg = self._config(ctx, self.plan_steps(ctx, k))
            except DPCacheError:
                return None
            return ctx.search_compute(lambda: apply_dpcache(ctx.pipe, cfg), lambda: remove_dpcache(ctx.pipe))

        self.cost_tensor(ctx)  # calibrate outside the budget-cache lock
        n = min(len(ctx.calibration_prompts), max(1, ctx.search_prompts))
        key = ctx.key("dpcache-size", f"o{self.order}", f"m{first}l{last}", f"K{budget}", f"n{n}")
        k_min = len(mandatory_steps(ctx.num_steps, first, last))
        return cached_search(
            ctx.cache_dir / "budgets.json",
            key,
            lambda: search_schedule_size(measure, budget, ctx.num_steps, k_min, method=self.name),
        )

    def _sized(self, ctx: ModelContext, budget: int) -> tuple[list[int], BudgetMatch | None]:
        """(key steps, size match) at budget K; DPCacheError saying why when K cannot be run."""
        from dpcache.errors import DPCacheError

        self.cost_tensor(ctx)  # an unreadable cached tensor is an error naming its file, not an unreachable K
        try:
            steps = self.plan_steps(ctx, budget)  # a budget the planner refuses is refused before measuring
        except DPCacheError as e:
            raise DPCacheError(f"{self.name} cannot plan K={budget} at T={ctx.num_steps}: {e}") from None
        if budget >= ctx.num_steps:
            return steps, None
        result = self.match(ctx, budget)
        if not result.reachable:
            raise DPCacheError(result.message)
        k = int(result.value)
        return (steps if k == budget else self.plan_steps(ctx, k)), result

    def schedule(self, ctx: ModelContext, budget: int) -> list[int]:
        """The key steps DPCache runs at budget K: planned for the size whose measured compute matches K."""
        return self._sized(ctx, budget)[0]

    def configure(self, ctx: ModelContext, budget: int) -> Configured:
        from dpcache import apply_dpcache, dpcache_stats, remove_dpcache
        from dpcache.errors import DPCacheError

        try:
            steps, match = self._sized(ctx, budget)
        except DPCacheError as e:
            raise UnreachableBudget(str(e)) from None
        first, last = self.settings(ctx)
        cfg = self._config(ctx, steps)
        tag_knobs = {"M": first, "O": self.order} | ({"L": last} if last else {})
        measured = {"measured_K": round(match.measured, 4)} if match else {}
        return Configured(
            self.name,
            budget,
            ctx.num_steps,
            config_tag(self.name, budget, **tag_knobs),
            apply=lambda: apply_dpcache(ctx.pipe, cfg),
            remove=lambda: remove_dpcache(ctx.pipe),
            cache_hits=lambda: sum(s.cache_hits for s in dpcache_stats(ctx.pipe).values()),
            knobs=tag_knobs | {"key_steps": len(steps)} | measured,
            schedule=steps,
            is_cache=True,
            match=match,
        )


class DPCacheTunedMethod(BenchMethod):
    """DPCache with the settings `dpcache.tune` chooses per model and K on the calibration prompts (solver,
    Taylor order per segment, first/last full steps, extrapolation cap, key-step moves), sized like `dpcache`
    (the same number of key steps, so the same measured compute); the schedule file is cached per model."""

    name, knob = "dpcache-tuned", "key steps (sized like dpcache); settings tuned on calibration prompts"
    description = "DPCache, settings chosen by `dpcache tune` on the calibration prompts (final-output PSNR)"

    def __init__(self) -> None:
        self.released = DPCacheMethod()
        self.variants = {o: DPCacheMethod(order=o, name=f"dpcache-o{o}") for o in TUNE_ORDERS}

    def tensors(self, ctx: ModelContext) -> dict[int, Any]:
        """One cost tensor per Taylor order (each calibrated once per model, shared with `dpcache-o<N>`)."""
        return {o: m.cost_tensor(ctx) for o, m in self.variants.items()}

    def prepare(self, ctx: ModelContext) -> None:
        self.tensors(ctx)

    def tuned(self, ctx: ModelContext, k: int) -> tuple[Path, Any]:
        """(schedule file, tune result) for k key steps; scores and references cached in `<cache>/tune`."""
        from filelock import FileLock

        from dpcache.tune import tune

        n = len(ctx.calibration_prompts)
        path = ctx.cache_dir / "tune" / f"{ctx.key('tuned', f'k{k}', f'n{n}')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=7200):
            result = tune(
                ctx.pipe,
                self.tensors(ctx),
                k,
                list(ctx.calibration_prompts),  # never the evaluation prompts
                seeds=[42 + i for i in range(n)],
                num_inference_steps=ctx.num_steps,
                prompt_to_kwargs=lambda p: ctx.kwargs(p),
                model_id=ctx.spec.name,
                weights_hash=ctx.weights_id,
                cache_dir=ctx.cache_dir / "tune",
                out=path,
                progress=ctx.progress,
            )
        return path, result

    def configure(self, ctx: ModelContext, budget: int) -> Configured:
        from dpcache import DPCacheConfig, apply_dpcache, dpcache_stats, remove_dpcache
        from dpcache.errors import DPCacheError

        try:
            self.released.plan_steps(ctx, min(budget, ctx.num_steps))
            match = None if budget >= ctx.num_steps else self.released.match(ctx, budget)
        except DPCacheError as e:
            raise UnreachableBudget(f"{self.name} cannot plan K={budget} at T={ctx.num_steps}: {e}") from None
        if match is not None and not match.reachable:
            raise UnreachableBudget(match.message, match)
        k = ctx.num_steps if match is None else int(match.value)
        path, result = self.tuned(ctx, k)
        sf = result.schedule
        cfg = DPCacheConfig(num_inference_steps=ctx.num_steps, schedule_file=path, model_id=ctx.spec.name)
        cap = sf.settings.get("max_extrapolation")
        knobs = {
            "key_steps": len(sf.key_steps),
            "solver": sf.settings.get("solver"),
            "segment_orders": "".join(map(str, sf.segment_orders)),
            "M": sf.first_full_steps,
            "L": sf.last_full_steps,
            "max_extrapolation": "none" if cap is None else cap,
            "key_step_moves": len(sf.settings.get("moves", [])),
            "calibration_psnr": sf.calibration_score,
            "released_calibration_psnr": sf.released_score,
            "tune_samples": sf.samples,
        } | ({"measured_K": round(match.measured, 4)} if match else {})
        return Configured(
            self.name,
            budget,
            ctx.num_steps,
            config_tag(self.name, budget),
            apply=lambda: apply_dpcache(ctx.pipe, cfg),
            remove=lambda: remove_dpcache(ctx.pipe),
            cache_hits=lambda: sum(s.cache_hits for s in dpcache_stats(ctx.pipe).values()),
            knobs=knobs,
            schedule=list(sf.key_steps),
            is_cache=True,
            match=match,
            artifacts=[str(path)],
        )


class BaselineMethod(BenchMethod):
    """A `baselines.base.CacheMethod`, its knob searched so the measured compute matches K (±5%)."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self.name, self.knob = method.name, method.knob
        self.description = (method.origin or "").split("\n")[0][:80]

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
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, sort_keys=True))
            os.replace(tmp, path)
            return data

    def prepare(self, ctx: ModelContext) -> None:
        self.artifacts(ctx)

    def _measure(self, ctx: ModelContext, artifacts: dict) -> Callable[[float], float]:
        m = self.method

        def measure(value: float) -> float:
            return ctx.search_compute(
                lambda: m.apply(ctx.pipe, value, ctx.num_steps, artifacts), lambda: m.remove(ctx.pipe)
            )

        return measure

    def match(self, ctx: ModelContext, budget: int) -> BudgetMatch:
        """The knob value for K (searched on the calibration prompts; cached in `<cache>/budgets.json`)."""
        artifacts = self.artifacts(ctx)
        m = self.method
        n = min(len(ctx.calibration_prompts), max(1, ctx.search_prompts))
        key = ctx.key(self.name, knob_signature(m), f"K{budget}", f"n{n}")
        return cached_search(
            ctx.cache_dir / "budgets.json",
            key,
            lambda: search_method(m, self._measure(ctx, artifacts), budget),
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
