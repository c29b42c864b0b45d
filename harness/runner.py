"""The benchmark runner: references, then every method × budget sampled on the evaluation prompts, measured
(FLOPs, wall-clock, memory, cache hits), scored against the references and tracked."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
from harness.metrics import MetricResult, Unavailable
from harness.records import ResultRecord, provenance

EVAL_SEED_BASE = 1000


@dataclass(frozen=True)
class Skipped:
    """A (method, budget) that did not run, and why (unsupported family, unreachable budget)."""

    model: str
    method: str
    budget: int | None
    reason: str


def cache_check(record: ResultRecord, tol: float = 0.05) -> str | None:
    """Why a cache method's record is invalid, or None: no cache hit although K < T, or — for a fixed
    schedule (DPCache), whose compute does not depend on the prompt — measured compute off K by more than
    `tol`, i.e. not compared at matched compute."""
    if record.method in ("full", "fewer-steps") or record.budget is None or record.budget >= record.num_steps:
        return None
    hits = record.cache_hits if isinstance(record.cache_hits, list) else [record.cache_hits or 0]
    if sum(h or 0 for h in hits) <= 0:
        return f"{record.test_id}: no cache hits at K={record.budget} < T={record.num_steps}: the cache never engaged"
    speedup = record.flops_speedup
    if "key_steps" in record.knobs and isinstance(speedup, (int, float)) and speedup > 0:
        measured = record.num_steps / speedup
        if abs(measured - record.budget) > tol * record.budget:
            return (
                f"{record.test_id}: measured compute K={measured:.2f} is off the budget K={record.budget} by more "
                f"than {tol:.0%} ({record.knobs['key_steps']} key steps): not at matched compute"
            )
    return None


def _adherence(spec: Any, images: Any, prompts: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
    """Prompt adherence by the zoo's checks: per prompt, the fraction of the attributes it names (digit,
    colour, background; for video digit, colour, direction of motion) that the output shows; plus each
    attribute's and the all-three fraction as extras."""
    if spec.scale != "tiny":
        why = "the zoo's prompt-adherence checks read the tiny digit-scene models only"
        return Unavailable(why, "adherence"), {}
    video = images.dim() == 5
    try:
        if video:  # digit / colour / direction of motion, read by the zoo's video checks
            from harness.zoo.measure_video import adherence as video_adherence

            res = video_adherence(list(images), [str(p) for p in prompts])
        else:
            from harness.zoo.classifier import prompt_adherence

            if spec.input_kind == "class_label":  # DiT is asked for the digit only: colour is its own choice
                prompts = [int(spec.pipeline_kwargs(p)["class_labels"][0]) for p in prompts]
            res = prompt_adherence(images, list(prompts))
    except FileNotFoundError as e:
        return Unavailable(str(e), "adherence"), {}
    attrs = ("digit", "colour", "direction") if video else ("digit", "colour", "background")
    per = [
        sum(float(r[a]) for a in attrs if a in r) / sum(1 for a in attrs if a in r) for r in res["per_prompt"]
    ]
    extras = {f"adherence_{k}": float(res[k]) for k in (*attrs, "all") if res.get(k) is not None}
    return MetricResult(
        "adherence", sum(per) / len(per), tuple(per), {"criterion": "attribute fraction"}
    ), extras


def _prompt_metrics(spec: Any, images: Any, prompts: Sequence[Any]) -> dict[str, Any]:
    from harness import metrics

    adherence, extras = _adherence(spec, images, prompts)
    out: dict[str, Any] = {"adherence": adherence, "extra_metrics": extras}
    text = all(isinstance(p, str) for p in prompts) and images.dim() == 4
    if text and spec.scale == "full":
        out["clip_score"] = metrics.clip_score(images, list(prompts))
        out["image_reward"] = metrics.image_reward(images, list(prompts))
    else:
        why = "text-to-image at full scale only (tiny models draw digit scenes; adherence is the zoo classifier)"
        out["clip_score"] = Unavailable(why, "clip_score")
        out["image_reward"] = Unavailable(why, "image_reward")
    return out


NOT_TIMED = "wall-clock not timed (repeats = 0: no timed runs; FLOPs speedup is exact)"


def _timing_fields(
    full: dict[str, Any], mine: dict[str, Any], sp: Any, repeats: int, warmup: int
) -> dict[str, Any]:
    """The record's `timing` block: per-repeat samples and medians, or only `repeats: 0` when untimed."""
    mem = sp.mem_overhead_bytes if isinstance(sp.mem_overhead_bytes, int) else None
    if not repeats:
        return {"repeats": 0, "warmup": 0, "mem_overhead_bytes": mem}
    return {
        "repeats": repeats,
        "warmup": warmup,
        "timer": mine["timing"].timer,
        "full": list(full["timing"].samples),
        "method": list(mine["timing"].samples),
        "wall_speedup": list(sp.wall_speedup_samples),
        "pipeline_s": mine["timing"].median,
        "pipeline_iqr_s": mine["timing"].iqr,
        "transformer_s": mine["transformer_s"],
        "full_pipeline_s": full["timing"].median,
        "full_transformer_s": full["transformer_s"],
        "mem_overhead_bytes": mem,
    }


class BenchSession:
    """One model's benchmark state: context, references, the full-step costs, and memoised records."""

    def __init__(
        self,
        spec: Any,
        pipe: Any = None,
        *,
        steps: int | None = None,
        num_prompts: int = 8,
        num_calibration: int = 4,
        repeats: int = 5,
        warmup: int = 1,
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
        self.seeds = [EVAL_SEED_BASE + i for i in range(len(self.prompts))]
        self.committed = committed  # read-only store checked first (a suite's committed references)
        self.store = store or ReferenceStore(refs_dir or Path(cache_dir) / "references" / spec.name)
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        self.methods: dict[str, BenchMethod] = registry()
        self.records: dict[tuple[str, int | None], ResultRecord] = {}
        self.images: dict[str, Any] = {}
        self._refs: Any = None
        self._full: dict[str, Any] | None = None

    # ------------------------------------------------------------------ references
    def key_fields(self, prompt: Any, seed: int) -> dict[str, Any]:
        spec, pipe = self.spec, self.pipe
        kw = self.ctx.kwargs(prompt)
        return {
            "model_id": spec.name,
            "weights_hash": self.ctx.weights_id,
            "pipeline_class": type(pipe).__name__,
            "scheduler_config": pipe.scheduler,
            "num_steps": self.ctx.num_steps,
            "height": kw.get("height", spec.height),
            "width": kw.get("width", spec.width),
            "frames": kw.get("num_frames"),
            "guidance": kw.get("true_cfg_scale", kw.get("guidance_scale")),
            "dtype": str(next(pipe.transformer.parameters()).dtype),
            "prompt": prompt,
            "seed": seed,
        }

    def reference_keys(self) -> list[str]:
        from harness.references import reference_key

        return [reference_key(**self.key_fields(p, s)) for p, s in zip(self.prompts, self.seeds)]

    def references(self) -> Any:
        """Full-step outputs of the evaluation prompts (N, ...), from the store or computed and stored."""
        if self._refs is None:
            import torch

            outs = []
            for key, p, s in self._bar(
                list(zip(self.reference_keys(), self.prompts, self.seeds)), "references"
            ):
                meta = {**self.key_fields(p, s), "scheduler_config": dict(self.pipe.scheduler.config)}
                found = self.committed.get(key) if self.committed is not None else None
                if found is None:
                    found = self.store.get_or_compute(key, lambda p=p, s=s: self.ctx.call(p, s), meta)
                outs.append(found)
            self._refs = torch.cat(outs)
        return self._refs

    def fresh_full(self, index: int) -> Any:
        """Recompute the full-step output of evaluation prompt `index` (for the drift check)."""
        return self.ctx.call(self.prompts[index], self.seeds[index])

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

    def record(self, name: str, budget: int | None) -> ResultRecord:
        """The result of method `name` at budget K (memoised); raises UnreachableBudget when it cannot run."""
        key = (name, self.ctx.num_steps if name == "full" or budget is None else budget)
        if key not in self.records:
            self.records[key] = self._run(self.configure(name, key[1]))
        return self.records[key]

    def _run(self, cfg: Configured) -> ResultRecord:
        import torch

        from harness.measure import RunCost, speedups
        from harness.metrics import fidelity_metrics

        refs, full = self.references(), self.full_costs()
        cfg.apply()
        try:
            flops, outs, hits = [], [], []
            if cfg.method == "full":
                outs, flops = [refs], [full["flops"]]
            else:
                for i, (p, s) in enumerate(self._bar(list(zip(self.prompts, self.seeds)), cfg.config_tag)):
                    if i == 0 or cfg.adaptive:
                        f, out = self.ctx.transformer_flops(p, s, cfg.num_steps)
                        flops.append(f)
                    else:
                        out = self.ctx.call(p, s, cfg.num_steps)
                    outs.append(out)
                    hits.append(cfg.cache_hits())
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
        measured_k = self.ctx.measured_compute(mean_flops)
        timing = _timing_fields(full, mine, sp, self.repeats, self.warmup)
        if not self.repeats:
            sp = replace(sp, wall_speedup=Unavailable(NOT_TIMED, "wall_speedup"))
        extra: dict[str, Any] = {"measured_k": measured_k}
        if cfg.is_cache and cfg.budget is not None and cfg.budget < self.ctx.num_steps and not any(hits):
            extra["cache_engaged"] = Unavailable(
                f"no cache hits at K={cfg.budget} < T={self.ctx.num_steps}: the cache never engaged",
                "cache_engaged",
            )
        if mine["transformer_s"]:
            extra["transformer_wall_speedup"] = full["transformer_s"] / mine["transformer_s"]
        quality = fidelity_metrics(images, refs)
        prompt_metrics = _prompt_metrics(self.spec, images, self.prompts)
        extra.update(prompt_metrics.pop("extra_metrics"))
        record = ResultRecord(
            suite=self.suite,
            model=self.spec.name,
            scale=self.spec.scale,
            method=cfg.method,
            budget=cfg.budget,
            num_steps=self.ctx.num_steps,
            config_tag=cfg.config_tag,
            schedule=cfg.schedule,
            full_steps=len(cfg.schedule) if cfg.schedule is not None else round(measured_k),
            flops_speedup=sp.flops_speedup,
            wall_speedup=sp.wall_speedup,
            peak_mem=mine["memory"],
            reference_key=self.reference_keys(),
            prompts=[str(p) for p in self.prompts],
            cache_hits=[int(h) for h in hits] if hits and all(h is not None for h in hits) else None,
            flops=int(mean_flops),
            timing=timing,
            knobs=dict(cfg.knobs),
            extra_metrics=extra,
            **quality,
            **prompt_metrics,
            **provenance(self.ctx.device),
        )
        self.images[record.config_tag] = images
        if self.artifacts_dir is not None:
            self._save_images(record, images)
        return record

    def _save_images(self, record: ResultRecord, images: Any) -> None:
        from PIL import Image

        from harness.tracking import _to_uint8_images

        d = self.artifacts_dir / record.model / record.config_tag
        d.mkdir(parents=True, exist_ok=True)
        if images.dim() == 5:  # video: a strip of up to five evenly spaced frames per prompt
            f = images.shape[1]
            for j in sorted({round(x * (f - 1) / 4) for x in range(5)}):
                for i, arr in enumerate(_to_uint8_images(images[:, j])):
                    Image.fromarray(arr).save(d / f"prompt{i:02d}_f{j:02d}.png")
            return
        for i, arr in enumerate(_to_uint8_images(images)):
            Image.fromarray(arr).save(d / f"prompt{i:02d}.png")

    def heatmap(self, path: str | Path) -> Path:
        """The cost-tensor heatmap and cost-vs-K curve (`dpcache inspect --plot` style)."""
        from dpcache.cli import _plot

        out = Path(path)
        if not out.is_file():
            _plot(self.cost_tensor(), str(out), {"first_full_steps": DPCacheMethod().first_full_steps})
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
                if skipped is not None:
                    skipped.append(Skipped(spec.name, name, budget, str(e)))
                continue
            arts = [str(heat)] if heat is not None and name == "dpcache" else []
            tracker.log(rec, images=session.images.get(rec.config_tag), artifacts=arts)
            records.append(rec)
    finally:
        if own:
            tracker.close()
    return records
