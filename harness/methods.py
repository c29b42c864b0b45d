"""The method registry the harness runs: full, fewer-steps, dpcache and every registered baseline, each
configured at a budget K (full transformer computations per sample) on one model context."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.budget import BudgetMatch, cached_search, search_knob
from harness.records import config_tag

CORE_METHODS = ("full", "fewer-steps", "dpcache")
DEFAULT_CACHE_DIR = Path(".dpcache-cache")
DPCACHE_FIRST_FULL = 3
DPCACHE_ORDER = 2


class PromptOverlapError(ValueError):
    """Calibration and evaluation prompts share entries: results would be measured on training data."""


class UnreachableBudget(RuntimeError):
    """A method cannot be configured at this budget; `match` says which budgets it can hit."""

    def __init__(self, message: str, match: BudgetMatch | None = None) -> None:
        super().__init__(message)
        self.match = match


def check_prompts_disjoint(calibration: Sequence[Any], evaluation: Sequence[Any], model: str = "") -> None:
    """Raise `PromptOverlapError` naming the shared prompts when the two sets intersect."""
    shared = sorted({str(p) for p in calibration} & {str(p) for p in evaluation})
    if shared:
        head = ", ".join(repr(s) for s in shared[:5]) + (" ..." if len(shared) > 5 else "")
        raise PromptOverlapError(
            f"{model or 'model'}: calibration and evaluation prompts must be disjoint, "
            f"{len(shared)} prompt(s) are in both: {head}"
        )


def pipeline_weights_hash(pipe: Any, path: str | os.PathLike[str] | None = None) -> str:
    """sha256 of what determines the outputs: the weights directory when given, else every module's state."""
    from harness.references import weights_hash

    if path is not None and Path(path).is_dir():
        root = Path(path)
        files = sorted(f for f in root.rglob("*") if f.is_file())
        if sum(f.stat().st_size for f in files) > (2 << 30):  # full-scale checkpoints: names + sizes
            h = hashlib.sha256(b"stat-fingerprint\0")
            for f in files:
                h.update(f"{f.relative_to(root).as_posix()}|{f.stat().st_size}\0".encode())
            return h.hexdigest()
        return weights_hash(root)
    h = hashlib.sha256()
    for name, comp in sorted(getattr(pipe, "components", {}).items()):
        if hasattr(comp, "state_dict"):
            h.update(name.encode() + b"\0" + weights_hash(comp).encode())
    return h.hexdigest()


class _CountingTransformer:
    """Stands in for `pipe.transformer` and counts the FLOPs of every call (probe work included)."""

    def __init__(self, real: Any) -> None:
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "flops", 0)
        object.__setattr__(self, "calls", 0)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            out = self._real(*args, **kwargs)
        object.__setattr__(self, "flops", self.flops + int(counter.get_total_flops()))
        object.__setattr__(self, "calls", self.calls + 1)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real, name, value)


@contextlib.contextmanager
def counting_transformer(pipe: Any) -> Iterator[_CountingTransformer]:
    """Count the transformer's FLOPs (`.flops`, `.calls`) while the block runs; restores `pipe.transformer`."""
    real = pipe.transformer
    proxy = _CountingTransformer(real)
    object.__setattr__(pipe, "transformer", proxy)
    try:
        yield proxy
    finally:
        object.__setattr__(pipe, "transformer", real)


@dataclass
class ModelContext:
    """One loaded model as the methods see it: its spec, pipeline, T, prompts, seeds and cache directory."""

    spec: Any
    pipe: Any
    num_steps: int
    calibration_prompts: tuple[Any, ...]
    evaluation_prompts: tuple[Any, ...]
    weights_id: str
    cache_dir: Path = DEFAULT_CACHE_DIR
    device: str = "cpu"
    progress: bool = True
    search_prompts: int = 2  # calibration prompts used to measure compute during a knob search
    _full_flops: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_prompts_disjoint(self.calibration_prompts, self.evaluation_prompts, self.spec.name)
        self.cache_dir = Path(self.cache_dir)

    @property
    def family(self) -> str:
        return self.spec.family

    def kwargs(self, prompt: Any, steps: int | None = None) -> dict[str, Any]:
        kw = self.spec.pipeline_kwargs(prompt, steps or self.num_steps)
        kw.pop("num_inference_steps", None)
        return kw

    def call(self, prompt: Any, seed: int, steps: int | None = None) -> Any:
        """One sample (images (1,C,H,W) or video (1,F,C,H,W), float in [0, 1], on CPU)."""
        import torch

        out = self.pipe(
            num_inference_steps=steps or self.num_steps,
            generator=torch.Generator("cpu").manual_seed(int(seed)),
            output_type="pt",
            **self.kwargs(prompt, steps),
        )
        x = out.images if hasattr(out, "images") else out.frames
        x = torch.as_tensor(x).detach().float().cpu()
        return x

    def transformer_flops(self, prompt: Any, seed: int, steps: int | None = None) -> tuple[int, Any]:
        """(transformer FLOPs, output) of one sample."""
        with counting_transformer(self.pipe) as proxy:
            out = self.call(prompt, seed, steps)
        return proxy.flops, out

    def full_flops(self) -> int:
        """Transformer FLOPs of one uncached T-step sample (computed once)."""
        if self._full_flops is None:
            self._full_flops, _ = self.transformer_flops(self.calibration_prompts[0], 42)
        return self._full_flops

    def measured_compute(self, flops: float) -> float:
        """Transformer FLOPs of a sample in units of full computations (K): T × flops / full-sample flops."""
        return self.num_steps * float(flops) / self.full_flops()

    def key(self, *parts: Any) -> str:
        return "-".join([self.spec.name, self.weights_id[:12], f"T{self.num_steps}", *map(str, parts)])


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
    name, knob = "dpcache", "budget (planned exactly)"
    description = "path-aware cost tensor + DP key steps, Taylor predictor (M3, O2)"

    def __init__(self, first_full_steps: int = DPCACHE_FIRST_FULL, order: int = DPCACHE_ORDER) -> None:
        self.first_full_steps, self.order = first_full_steps, order

    def supports(self, family: str) -> tuple[bool, str]:
        return True, ""

    def cost_path(self, ctx: ModelContext) -> Path:
        n = len(ctx.calibration_prompts)
        return ctx.cache_dir / "dpcache" / f"{ctx.key('taylor', f'o{self.order}', f'n{n}')}.safetensors"

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
            return calibrate(
                ctx.pipe,
                list(ctx.calibration_prompts),
                num_inference_steps=ctx.num_steps,
                predictor=TaylorPredictor(order=self.order),
                model_id=ctx.spec.name,
                prompt_to_kwargs=lambda p: ctx.kwargs(p),
                work_dir=path.parent / f"{path.stem}.parts",
                first_full_steps=self.first_full_steps,
                progress=ctx.progress,
                out=path,
            )

    def prepare(self, ctx: ModelContext) -> None:
        self.cost_tensor(ctx)

    def schedule(self, ctx: ModelContext, budget: int) -> list[int]:
        from dpcache import plan

        return list(plan(self.cost_tensor(ctx), budget, first_full_steps=self.first_full_steps).key_steps)

    def configure(self, ctx: ModelContext, budget: int) -> Configured:
        from dpcache import DPCacheConfig, apply_dpcache, dpcache_stats, remove_dpcache
        from dpcache.errors import DPCacheError

        try:
            steps = self.schedule(ctx, budget)
        except DPCacheError as e:
            raise UnreachableBudget(f"dpcache cannot plan K={budget} at T={ctx.num_steps}: {e}") from None
        cfg = DPCacheConfig(
            num_inference_steps=ctx.num_steps,
            schedule=steps,
            first_full_steps=self.first_full_steps,
            order=self.order,
        )
        return Configured(
            "dpcache",
            budget,
            ctx.num_steps,
            config_tag("dpcache", budget, M=self.first_full_steps, O=self.order),
            apply=lambda: apply_dpcache(ctx.pipe, cfg),
            remove=lambda: remove_dpcache(ctx.pipe),
            cache_hits=lambda: sum(s.cache_hits for s in dpcache_stats(ctx.pipe).values()),
            knobs={"M": self.first_full_steps, "O": self.order},
            schedule=steps,
            is_cache=True,
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

            data = self.method.calibrate(ctx.pipe, Calibration(ctx.spec.name, ctx.num_steps, run_prompts, out_dir))
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, sort_keys=True))
            os.replace(tmp, path)
            return data

    def prepare(self, ctx: ModelContext) -> None:
        self.artifacts(ctx)

    def _measure(self, ctx: ModelContext, artifacts: dict) -> Callable[[float], float]:
        prompts = ctx.calibration_prompts[: max(1, ctx.search_prompts)]

        def measure(value: float) -> float:
            self.method.apply(ctx.pipe, value, ctx.num_steps, artifacts)
            try:
                flops = [ctx.transformer_flops(p, 42 + i)[0] for i, p in enumerate(prompts)]
            finally:
                self.method.remove(ctx.pipe)
            return ctx.measured_compute(sum(flops) / len(flops))

        return measure

    def match(self, ctx: ModelContext, budget: int) -> BudgetMatch:
        """The knob value for K (searched on the calibration prompts; cached in `<cache>/budgets.json`)."""
        artifacts = self.artifacts(ctx)
        m = self.method
        n = min(len(ctx.calibration_prompts), max(1, ctx.search_prompts))
        key = ctx.key(self.name, f"K{budget}", f"n{n}")
        return cached_search(
            ctx.cache_dir / "budgets.json",
            key,
            lambda: search_knob(
                self._measure(ctx, artifacts),
                budget,
                method=self.name,
                knob=m.knob,
                knob_range=m.knob_range,
                knob_values=m.knob_values,
                compute_grows_with_knob=m.compute_grows_with_knob,
            ),
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


def registry() -> dict[str, BenchMethod]:
    """Every method by name: the three core methods, then every `baselines.base.load_all()` entry."""
    out: dict[str, BenchMethod] = {"full": FullMethod(), "fewer-steps": FewerStepsMethod(), "dpcache": DPCacheMethod()}
    try:
        from baselines.base import load_all

        baselines = load_all()
    except Exception as e:  # a broken baseline module must not take the harness down
        import warnings

        warnings.warn(f"baselines could not be loaded: {type(e).__name__}: {e}", stacklevel=2)
        baselines = {}
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
