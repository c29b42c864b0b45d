"""DPCache in the harness: `dpcache` (the released recurrence), its order / solver variants, and
`dpcache-tuned` (settings chosen by `dpcache.tune` on the calibration prompts); each sized to K by measured compute."""

from pathlib import Path
from typing import Any

from harness.budget import BudgetMatch, cached_search, search_schedule_size
from harness.context import ModelContext, check_prompts_disjoint
from harness.method_base import BenchMethod, Configured, UnreachableBudget
from harness.records import config_tag

DPCACHE_FIRST_FULL = 3
DPCACHE_ORDER = 2
DPCACHE_SOLVER = "official"  # the released recurrence, so `dpcache` reproduces the paper
TUNE_ORDERS = (2, 1, 0)
# `dpcache-tuned` scores its candidates on at least this many calibration prompts (the run's, then the model's
# next ones). More is not clearly better: on dit-tiny, schedules tuned on 6 prompts scored below those tuned on
# 4 on 12 held-out probe prompts (K = 13: 26.56 vs 28.14 dB; K = 9: 22.72 vs 23.36;
# `benchmarks/bench_tune_holdout.py --model dit-tiny --tune-prompts N`), so the search stays at 4
TUNE_PROMPTS = 4
# and it runs both branches of the search (`TuneSpace.aligned`), choosing between them on up to this many further
# calibration prompts (`tune(validation_prompts=...)`; dit-tiny has 6 calibration prompts: 2 are left)
VALIDATION_PROMPTS = 4


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
        """The model's cost tensor: calibrated once per model + T + predictor, then reused from disk. The
        missing tensors of the other Taylor orders (`TUNE_ORDERS`: `dpcache-tuned`, `dpcache-o<N>`) are built
        from the same full-compute runs (a cost tensor costs well under a second per prompt beside them)."""
        from filelock import FileLock

        from dpcache import CostTensor, TaylorPredictor, calibrate_predictors

        path = self.cost_path(ctx)
        if path.is_file():
            return CostTensor.load(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=7200):
            if path.is_file():
                return CostTensor.load(path)
            first, last = self.settings(ctx)
            siblings = {o: DPCacheMethod(self.first_full_steps, o).cost_path(ctx) for o in TUNE_ORDERS}
            orders = [self.order] + [o for o, p in siblings.items() if o != self.order and not p.is_file()]
            paths = [path] + [siblings[o] for o in orders[1:]]
            return calibrate_predictors(
                ctx.pipe,
                list(ctx.calibration_prompts),
                [TaylorPredictor(order=o) for o in orders],
                num_inference_steps=ctx.num_steps,
                model_id=ctx.spec.name,
                prompt_to_kwargs=lambda p: ctx.kwargs(p),
                work_dir=path.parent / f"{path.stem}.parts",
                first_full_steps=first,
                last_full_steps=last,
                progress=ctx.progress,
                outs=paths,
            )[0]

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
            return ctx.search_compute(
                lambda: apply_dpcache(ctx.pipe, cfg),
                lambda: remove_dpcache(ctx.pipe),
                label=f"{self.name} k={k}",
            )

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

    @staticmethod
    def tune_prompts(ctx: ModelContext) -> list[Any]:
        """The calibration prompts the search scores on (`TUNE_PROMPTS`; disjoint from the evaluation prompts)."""
        prompts = list(ctx.calibration_prompts)
        prompts += [p for p in ctx.spec.calibration_prompts if p not in prompts][
            : TUNE_PROMPTS - len(prompts)
        ]
        check_prompts_disjoint(prompts, ctx.evaluation_prompts, ctx.spec.name, spec=ctx.spec)
        return prompts

    def tuned(self, ctx: ModelContext, k: int) -> tuple[Path, Any]:
        """(schedule file, tune result) for k key steps; scores and references cached in `<cache>/tune`."""
        from filelock import FileLock

        from dpcache.tune import TuneSpace, tune

        prompts = self.tune_prompts(ctx)
        rest = [p for p in ctx.spec.calibration_prompts if p not in prompts]
        validation = rest[:VALIDATION_PROMPTS]
        check_prompts_disjoint(validation, ctx.evaluation_prompts, ctx.spec.name, spec=ctx.spec)
        n = len(prompts)
        path = ctx.cache_dir / "tune" / f"{ctx.key('tuned', f'k{k}', f'n{n}', f'v{len(validation)}')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=7200):
            result = tune(
                ctx.pipe,
                self.tensors(ctx),
                k,
                prompts,  # calibration prompts only, never the evaluation prompts
                space=TuneSpace(aligned=True),
                validation_prompts=validation,
                validation_seeds=[1042 + i for i in range(len(validation))],
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
            "tune_prompts": len(sf.prompt_hashes),
            "branch": sf.settings.get("branch", "planned"),
            "validation_psnr": sf.settings.get("validation_psnr"),
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
