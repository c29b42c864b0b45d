"""The benchmark runner: references, then every method × budget sampled on the evaluation prompts, measured
(FLOPs, wall-clock, memory, cache hits), scored against the references and tracked."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.methods import (
    DEFAULT_CACHE_DIR,
    BenchMethod,
    Configured,
    DPCacheMethod,
    ModelContext,
    UnreachableBudget,
    pipeline_weights_hash,
    registry,
)
from harness.metrics import Unavailable
from harness.provenance import device_class, provenance
from harness.records import (
    Identity,
    Provenance,
    Quality,
    References,
    ResultRecord,
    Schedule,
    Speed,
    config_tag,
    variant_tag,
)
from harness.scoring import (
    NOT_TIMED,
    cache_check,
    compute_floor,
    matched,
    not_run_record,
    prompt_metrics,
    record_knobs,
    saturation_caveat,
    save_images,
    timing_part,
)
from harness.session_refs import ReferencesMixin
from harness.step_trace import StepTrace, merge_passes

__all__ = ["NOT_TIMED", "BenchSession", "Skipped", "cache_check", "run_benchmark"]

EVAL_SEED_BASE = 1000
DEFAULT_PROMPTS = 8  # the suites' and `dpcache-bench run`'s number of evaluation prompts


@dataclass(frozen=True)
class Skipped:
    """A (method, budget) that did not run, and why (unsupported family, unreachable budget); `floor` is the
    least compute (K) the method's knob was measured to reach, when known."""

    model: str
    method: str
    budget: int | None
    reason: str
    floor: float | None = None


class BenchSession(ReferencesMixin):
    """One model's benchmark state: context, references, the full-step costs, and memoised records."""

    def __init__(
        self,
        spec: Any,
        pipe: Any = None,
        *,
        steps: int | None = None,
        num_prompts: int = DEFAULT_PROMPTS,
        num_calibration: int = 4,
        repeats: int = 5,
        warmup: int = 1,
        default_prompts: int = DEFAULT_PROMPTS,
        refs_dir: str | Path | None = None,
        store: Any = None,
        committed: Any = None,
        cache_dir: str | Path = DEFAULT_CACHE_DIR,
        device: str = "cpu",
        suite: str = "bench",
        progress: bool = True,
        artifacts_dir: str | Path | None = None,
    ) -> None:
        from harness.references import ReferenceStore
        from harness.zoo.registry import load_pipeline

        loaded = pipe is None
        if loaded:
            pipe = load_pipeline(spec, device=device)
        pipe.set_progress_bar_config(disable=True)
        self.spec, self.pipe, self.suite = spec, pipe, suite
        if repeats < 0:
            raise ValueError(f"repeats must be >= 0 (0: no wall-clock timing), got {repeats}")
        self.repeats, self.warmup = repeats, warmup
        t = steps or spec.num_inference_steps
        weights_path = spec.path if loaded and spec.path else None
        self.ctx = ModelContext(
            spec,
            pipe,
            t,
            tuple(spec.calibration_prompts[:num_calibration]),
            tuple(spec.evaluation_prompts[:num_prompts]),
            pipeline_weights_hash(pipe, weights_path),
            Path(cache_dir),
            device,
            progress,
        )
        if len(self.ctx.evaluation_prompts) < num_prompts:
            raise ValueError(f"{spec.name} has only {len(self.ctx.evaluation_prompts)} evaluation prompts")
        self.prompts = list(self.ctx.evaluation_prompts)
        self.default_prompts = default_prompts
        self.seeds = [EVAL_SEED_BASE + i for i in range(len(self.prompts))]
        self.committed = committed  # read-only store checked first (a suite's committed references)
        self.store = store or ReferenceStore(refs_dir or Path(cache_dir) / "references" / spec.name)
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        self.methods: dict[str, BenchMethod] = registry()
        self.records: dict[tuple[str, int | None], ResultRecord] = {}
        self.images: dict[str, Any] = {}
        self._refs: Any = None
        self._full: dict[str, Any] | None = None

    # ------------------------------------------------------------------ measurement
    def _bar(self, items: list, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(items, desc=f"{self.spec.name} {desc}", leave=False, disable=not self.ctx.progress)

    def _time(self) -> dict[str, Any]:
        """Wall-clock (``repeats`` timed calls after warm-up; none when ``repeats`` is 0) and peak memory."""
        from harness.measure import ModuleTimer, peak_memory, time_call

        p, s = self.prompts[0], self.seeds[0]
        steps = self._steps
        timing, transformer_s = None, None
        if self.repeats:
            with ModuleTimer(self.pipe.transformer) as mt:
                timing = time_call(
                    lambda: self.ctx.call(p, s, steps), warmup=self.warmup, repeats=self.repeats
                )
            transformer_s = mt.seconds / (self.warmup + self.repeats)
        else:  # still warm up: the peak must not include first-call allocations
            for _ in range(self.warmup):
                self.ctx.call(p, s, steps)
        return {
            "timing": timing,
            "transformer_s": transformer_s,
            "memory": peak_memory(lambda: self.ctx.call(p, s, steps)),
        }

    def full_costs(self) -> dict[str, Any]:
        if self._full is None:
            self._steps = self.ctx.num_steps
            self._full = {"flops": self.ctx.full_flops(), **self._time()}
        return self._full

    # ------------------------------------------------------------------ records
    def method(self, name: str) -> BenchMethod:
        if name not in self.methods:
            raise KeyError(f"unknown method {name!r}; known: {', '.join(self.methods)}")
        return self.methods[name]

    def supports(self, name: str) -> tuple[bool, str]:
        return self.method(name).supports(self.spec.family)

    def cost_tensor(self) -> Any:
        m = self.method("dpcache")
        assert isinstance(m, DPCacheMethod)
        return m.cost_tensor(self.ctx)

    def configure(self, name: str, budget: int | None) -> Configured:
        ok, why = self.supports(name)
        if not ok:
            raise UnreachableBudget(f"{name} does not support {self.spec.family}: {why}")
        if budget is not None and budget > self.ctx.num_steps:
            raise UnreachableBudget(f"budget K={budget} exceeds T={self.ctx.num_steps}")
        return self.method(name).configure(self.ctx, self.ctx.num_steps if budget is None else budget)

    def tag(self, name: str, budget: int | None, base: str | None = None) -> str:
        """The config tag of (method, K) in this session: the method's own tag (DPCache's with its M/O/L
        knobs) plus `-T<T>` / `-N<prompts>` where T and the prompt count differ from the defaults."""
        if base is None:
            m = self.methods.get(name)
            knobs: dict[str, Any] = {}
            if isinstance(m, DPCacheMethod):
                first, last = m.settings(self.ctx)
                knobs = {"M": first, "O": m.order} | ({"L": last} if last else {})
            base = config_tag(name, self.ctx.num_steps if name == "full" else budget, **knobs)
        t, n = self.ctx.num_steps, len(self.prompts)
        return variant_tag(base, t, self.spec.num_inference_steps, n, self.default_prompts)

    def record(self, name: str, budget: int | None) -> ResultRecord:
        """The result of method `name` at budget K (memoised); raises UnreachableBudget when it cannot run."""
        key = (name, self.ctx.num_steps if name == "full" or budget is None else budget)
        if key not in self.records:
            self.records[key] = self._run(self.configure(name, key[1]))
        return self.records[key]

    def not_run(self, name: str, budget: int | None, error: Exception) -> ResultRecord:
        """The record of a configuration that could not run, with the reason and the measured floor."""
        return not_run_record(self, name, budget, str(error), compute_floor(getattr(error, "match", None)))

    def _run(self, cfg: Configured) -> ResultRecord:
        import torch

        from harness.measure import RunCost, speedups
        from harness.metrics import fidelity_metrics

        refs, full = self.references(), self.full_costs()
        cfg.apply()
        try:
            flops, outs, hits, traces = [], [], [], []
            if cfg.method == "full":
                outs, flops = [refs], [full["flops"]]
            else:
                for i, (p, s) in enumerate(self._bar(list(zip(self.prompts, self.seeds)), cfg.config_tag)):
                    with StepTrace(self.pipe.transformer) as trace:  # which steps ran the last block
                        if i == 0 or cfg.adaptive:
                            f, out = self.ctx.transformer_flops(p, s, cfg.num_steps)
                            flops.append(f)
                        else:
                            out = self.ctx.call(p, s, cfg.num_steps)
                    outs.append(out)
                    hits.append(cfg.cache_hits())
                    traces.append(trace.steps(cfg.num_steps) if cfg.num_steps == self.ctx.num_steps else None)
            self._steps = cfg.num_steps
            mine = full if cfg.method == "full" else self._time()
        finally:
            cfg.remove()
        images = torch.cat(outs)
        mean_flops = statistics.fmean(flops)
        sp = speedups(
            RunCost(full["flops"], full["timing"], full["memory"]),
            RunCost(int(mean_flops), mine["timing"], mine["memory"]),
        )
        measured_k = self.ctx.measured_compute(mean_flops)  # on the evaluation prompts
        t = self.ctx.num_steps
        extra: dict[str, Any] = {}
        if cfg.is_cache and cfg.budget is not None and cfg.budget < t and not any(hits):
            why = f"no cache hits at K={cfg.budget} < T={t}: the cache never engaged"
            extra["cache_engaged"] = Unavailable(why, "cache_engaged")
        if mine["transformer_s"]:
            extra["transformer_wall_speedup"] = full["transformer_s"] / mine["transformer_s"]
        quality = fidelity_metrics(images, refs)
        pm = prompt_metrics(self.spec, images, self.prompts)
        extra.update(pm.pop("extra_metrics"))
        prov = provenance(self.ctx.device)
        caveat = saturation_caveat(cfg.method, cfg.budget, cfg.match, t)
        record = ResultRecord(
            Identity(
                self.suite,
                self.spec.name,
                self.spec.scale,
                cfg.method,
                cfg.budget,
                t,
                len(self.prompts),
                self.tag(cfg.method, cfg.budget, cfg.config_tag),
                device_class(self.ctx.device),
                record_knobs(cfg.knobs),
            ),
            Speed(
                sp.flops_speedup,
                Unavailable(NOT_TIMED, "wall_speedup") if not self.repeats else sp.wall_speedup,
                mine["memory"],
                int(mean_flops),
                measured_k,
                matched(measured_k, cfg.budget, t, cfg.method),
                [int(h) for h in hits if h is not None],
                compute_floor(cfg.match),
            ),
            timing_part(full, mine, sp, self.repeats, self.warmup),
            Quality(**quality, **pm, extra=extra),
            Schedule(
                cfg.schedule,
                len(cfg.schedule) if cfg.schedule is not None else round(measured_k),
                *merge_passes(traces),
            ),
            References(self.reference_keys(), [str(p) for p in self.prompts], list(self.seeds)),
            Provenance(**prov),
        )
        if caveat:
            record.outcome.caveats.append(caveat)
        self.images[record.config_tag] = images
        if self.artifacts_dir is not None:
            save_images(self.artifacts_dir / record.model / record.config_tag, images)
        return record

    def heatmap(self, path: str | Path) -> Path:
        """The cost-tensor heatmap and cost-vs-K curve (`dpcache inspect --plot` style), and the curve as data
        beside it (`cost_curve.json`: the report redraws it with the chosen K marked)."""
        from dpcache.cli import plot_cost_tensor
        from harness.report.data import COST_CURVE, write_cost_curve

        out, opts = Path(path), {"first_full_steps": DPCacheMethod().first_full_steps}
        if not out.is_file():
            plot_cost_tensor(self.cost_tensor(), out, opts)
        if not out.with_name(COST_CURVE).is_file():
            write_cost_curve(self.cost_tensor(), out.with_name(COST_CURVE), opts)
        return out


def run_benchmark(
    model: str,
    methods: Sequence[str] | None = None,
    budgets: Sequence[int] = (25, 13, 9),
    steps: int | None = None,
    num_prompts: int = 8,
    *,
    repeats: int = 5,
    num_calibration: int = 4,
    tracker: Any = None,
    json_out: str | Path | None = None,
    mlflow_uri: str | None = None,
    refs_dir: str | Path | None = None,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    artifacts_dir: str | Path | None = None,
    pipe: Any = None,
    device: str = "cpu",
    suite: str = "bench",
    progress: bool = True,
    skipped: list[Skipped] | None = None,
) -> list[ResultRecord]:
    """Run `methods` × `budgets` on `model`'s evaluation prompts; log every record (JSON lines + MLflow).

    `full` runs once (K = T). Methods that do not support the model's family, and budgets a method cannot
    reach, are appended to `skipped` (when given) with the reason instead of failing the run.
    """
    from harness.methods import resolve_methods
    from harness.tracking import Tracker
    from harness.zoo.registry import get_spec

    spec = get_spec(model)
    names = resolve_methods(methods)
    session = BenchSession(
        spec,
        pipe,
        steps=steps,
        num_prompts=num_prompts,
        num_calibration=num_calibration,
        repeats=repeats,
        refs_dir=refs_dir,
        cache_dir=cache_dir,
        device=device,
        suite=suite,
        progress=progress,
        artifacts_dir=artifacts_dir,
    )
    own = tracker is None
    if own:
        tracker = Tracker(json_out or "results.jsonl", mlflow_uri=mlflow_uri)
    heat = None
    if "dpcache" in names:
        where = Path(artifacts_dir) / spec.name if artifacts_dir else session.ctx.cache_dir / "plots"
        where.mkdir(parents=True, exist_ok=True)
        heat = session.heatmap(where / "cost_tensor.png")
    records: list[ResultRecord] = []
    todo = [
        (n, None) if n == "full" else (n, int(b)) for n in names for b in (budgets if n != "full" else [None])
    ]
    try:
        for name, budget in todo:
            try:
                rec = session.record(name, budget)
            except UnreachableBudget as e:
                gone = session.not_run(name, budget, e)
                tracker.log(gone, plot=False)  # the report and BENCHMARKS.md list what did not run
                if skipped is not None:
                    skipped.append(Skipped(spec.name, name, budget, str(e), gone.speed.compute_floor_k))
                continue
            arts = [str(heat)] if heat is not None and name == "dpcache" else []
            tracker.log(rec, images=session.images.get(rec.config_tag), artifacts=arts)
            records.append(rec)
    finally:
        if own:
            tracker.close()
    return records
