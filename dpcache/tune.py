"""`dpcache.tune`: choose DPCache's settings for one budget K by the final-output error on calibration prompts."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DPCacheError
from .schedule_file import ScheduleFile

TUNE_VERSION = 1  # bump when the search or its scoring changes: cached scores are then recomputed


@dataclass
class TuneSpace:
    """What `tune` searches, stage by stage from the released settings (each stage keeps the best so far).

    1. `solvers` × `orders` (each order planned on its own cost tensor when one is given);
    2. `first_full_steps`, 3. `last_full_steps`, 4. `max_extrapolation` (the longest run of predicted
    steps after a key step, i.e. the planner's max jump − 1; None = the released 0.3·T);
    5. `per_segment`: the order of each segment, one segment at a time;
    6. `refine_radius` d: move one key step by ±1..±d, keep the move when the error drops (K unchanged),
    for up to `refine_passes` passes over the key steps.
    `max_samples` caps the pipeline calls of the whole search (references included); None = no cap.
    """

    solvers: tuple[str, ...] = ("official", "exact")
    orders: tuple[int, ...] = (2, 1, 0)
    first_full_steps: tuple[int, ...] = (2, 3, 4)
    last_full_steps: tuple[int, ...] = (0, 1, 2)
    max_extrapolation: tuple[int | None, ...] = (None, 10, 7, 5)
    per_segment: bool = True
    refine_radius: int = 2
    refine_passes: int = 1
    max_samples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class TuneResult:
    """The chosen schedule (as written to the schedule file) and what the search cost in this call."""

    schedule: ScheduleFile
    samples_run: int
    path: Path | None = None
    stopped: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _canon(obj: Any) -> Any:
    """A JSON-able, address-free form of pipeline call arguments (images and tensors by content hash)."""
    if isinstance(obj, Mapping):
        return {str(k): _canon(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canon(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "tobytes"):  # PIL images, numpy arrays
        return {type(obj).__name__: hashlib.sha256(obj.tobytes()).hexdigest()[:16]}
    if hasattr(obj, "detach"):  # torch tensors
        return {"tensor": hashlib.sha256(obj.detach().cpu().numpy().tobytes()).hexdigest()[:16]}
    return {type(obj).__name__: repr(obj)}


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def pipeline_fingerprint(pipe: Any) -> str:
    """sha256 of every component's config and weights (pass `weights_hash=` to skip it for huge models)."""
    import torch

    h = hashlib.sha256()
    for name, comp in sorted(getattr(pipe, "components", {}).items()):
        h.update(name.encode() + b"\0")
        cfg = getattr(comp, "config", None)
        if isinstance(cfg, Mapping):
            h.update(json.dumps(_canon(dict(cfg)), sort_keys=True).encode())
        if hasattr(comp, "get_vocab"):  # tokenizers
            h.update(json.dumps(sorted(comp.get_vocab().items())).encode())
        if isinstance(comp, torch.nn.Module):
            for key, tensor in sorted(comp.state_dict().items()):
                h.update(key.encode() + str(tensor.dtype).encode())
                h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tensor_for(cost: Any, order: int) -> Any:
    if isinstance(cost, Mapping):
        return cost.get(order, cost[max(cost)])
    return cost


class _Stop(Exception):
    """The sample cap was reached."""


@dataclass
class Candidate:
    """One schedule the search scored: key steps, per-segment orders, the derivative gate, settings."""

    key_steps: tuple[int, ...]
    segment_orders: tuple[int, ...]
    settings: dict[str, Any]
    score: float = float("-inf")

    @property
    def identity(self) -> str:
        """What determines the samples (settings that only shaped the plan are not part of it)."""
        first = int(self.settings["first_full_steps"])
        return json.dumps([list(self.key_steps), list(self.segment_orders), first])


class Search:
    """Scores candidates on the calibration prompts (cached), and runs the staged search of `TuneSpace`."""

    def __init__(
        self, pipe, kwargs, seeds, T, K, tensor_for, cache, ref_dir, weights_hash, max_samples, progress
    ):
        from tqdm.auto import tqdm

        self.pipe, self.kwargs, self.seeds, self.T, self.K = pipe, kwargs, seeds, T, K
        self.tensor_for, self.cache, self.ref_dir, self.weights_hash = (
            tensor_for,
            cache,
            ref_dir,
            weights_hash,
        )
        self.max_samples = max_samples
        self.scores: dict[str, list[float]] = (
            json.loads(cache.read_text()) if cache and cache.is_file() else {}
        )
        self.samples_run = self.samples_total = 0
        self.log: list[dict[str, Any]] = []
        self.stopped = ""
        self.released_score: float | None = None
        self.bar = tqdm(desc=f"dpcache tune K={K}", unit="sample", disable=not progress)

    def _sample(self, i: int) -> np.ndarray:
        import torch

        self.samples_run += 1
        self.bar.update(1)
        gen = torch.Generator("cpu").manual_seed(int(self.seeds[i]))
        out = self.pipe(num_inference_steps=self.T, generator=gen, **{**self.kwargs[i], "output_type": "np"})
        x = out.images if hasattr(out, "images") else out.frames
        x = x.detach().cpu().numpy() if hasattr(x, "detach") else x
        return np.asarray(x, dtype=np.float64)

    def _charge(self, n: int) -> None:
        if self.max_samples is not None and self.samples_total + n > self.max_samples:
            raise _Stop(f"sample cap {self.max_samples} reached")
        self.samples_total += n

    def references(self) -> list[np.ndarray]:
        """The full-step output of every prompt (sampled once; cached in `ref_dir`)."""
        self._charge(len(self.kwargs))
        refs = []
        for i, kw in enumerate(self.kwargs):
            name = _sha([self.weights_hash, _canon(kw), int(self.seeds[i]), self.T])[:32] + ".npy"
            path = self.ref_dir / name if self.ref_dir else None
            if path is not None and path.is_file():
                refs.append(np.load(path, allow_pickle=False))
                continue
            ref = self._sample(i)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
                with open(tmp, "wb") as fh:
                    np.save(fh, ref)
                os.replace(tmp, path)
            refs.append(ref)
        return refs

    def score(self, cand: Candidate, stage: str) -> Candidate:
        """Mean PSNR (dB, capped at 100) of the candidate's outputs against the full-step outputs."""
        from .hooks import DPCacheConfig, apply_dpcache, dpcache_stats, remove_dpcache

        ident = cand.identity
        new = not any(e.get("identity") == ident for e in self.log)  # first time in this search
        if new:
            self._charge(len(self.kwargs))
        if ident not in self.scores:
            cfg = DPCacheConfig(
                num_inference_steps=self.T,
                schedule=list(cand.key_steps),
                segment_orders=list(cand.segment_orders),
                order=max(cand.segment_orders),
                first_full_steps=int(cand.settings["first_full_steps"]),
            )
            apply_dpcache(self.pipe, cfg)
            values = []
            try:
                for i, ref in enumerate(self.refs):
                    mse = float(np.mean((self._sample(i) - ref) ** 2))
                    for name, run in dpcache_stats(self.pipe).items():
                        if run.computed_steps != list(cand.key_steps):  # the budget is exactly K
                            raise DPCacheError(
                                f"context {name!r} computed {run.computed_steps}, not the schedule"
                            )
                    values.append(100.0 if mse <= 1e-10 else min(100.0, 10 * float(np.log10(1.0 / mse))))
            finally:
                remove_dpcache(self.pipe)
            self.scores[ident] = values
            self._save()
        cand.score = float(np.mean(self.scores[ident]))
        self.log.append(
            {
                "stage": stage,
                "settings": cand.settings,
                "key_steps": list(cand.key_steps),
                "segment_orders": list(cand.segment_orders),
                "psnr": round(cand.score, 6),
                "new": new,
                "identity": ident,
            }
        )
        return cand

    def _save(self) -> None:
        if self.cache is None:
            return
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache.with_name(f".{self.cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.scores, sort_keys=True))
        os.replace(tmp, self.cache)

    def planned(self, settings: dict[str, Any], stage: str) -> Candidate | None:
        """Plan the candidate `settings` describe and score it (None, logged, when it cannot be planned)."""
        from .planner import plan

        cap = settings["max_extrapolation"]
        try:
            sched = plan(
                self.tensor_for(settings["order"]),
                self.K,
                first_full_steps=settings["first_full_steps"],
                last_full_steps=settings["last_full_steps"],
                max_jump=None if cap is None else cap + 1,
                solver=settings["solver"],
            )
        except DPCacheError as exc:
            self.log.append({"stage": stage, "settings": settings, "psnr": None, "note": str(exc)})
            return None
        orders = (int(settings["order"]),) * self.K
        return self.score(Candidate(tuple(sched.key_steps), orders, dict(settings)), stage)

    def run(self, space: TuneSpace, released: dict[str, Any]) -> Candidate:
        """The staged search; stops early (keeping the best so far) when the sample cap is reached."""
        from .planner import mandatory_steps

        try:
            self.refs = self.references()
            best = self.planned(released, "released")
            if best is None:
                raise DPCacheError(f"the released settings cannot plan K={self.K}: {self.log[-1]['note']}")
            self.released_score = round(best.score, 6)
        except _Stop as exc:
            raise DPCacheError(f"{exc} before the released settings were scored; raise max_samples") from None
        try:
            grid = [("solver+order", {"solver": s, "order": o}) for s in space.solvers for o in space.orders]
            grid += [("first_full_steps", {"first_full_steps": v}) for v in space.first_full_steps]
            grid += [("last_full_steps", {"last_full_steps": v}) for v in space.last_full_steps]
            grid += [("max_extrapolation", {"max_extrapolation": v}) for v in space.max_extrapolation]
            for stage, change in grid:
                settings = {**best.settings, **change}
                if settings != best.settings:
                    cand = self.planned(settings, stage)
                    best = cand if cand is not None and cand.score > best.score else best
            if space.per_segment and len(space.orders) > 1:
                for k in range(self.K):
                    end = best.key_steps[k + 1] if k + 1 < self.K else self.T
                    if end - best.key_steps[k] < 2:
                        continue  # nothing is predicted after this key step
                    base = best
                    for o in space.orders:
                        if o != base.segment_orders[k]:
                            orders = base.segment_orders[:k] + (o,) + base.segment_orders[k + 1 :]
                            settings = {**base.settings, "segment_orders": list(orders)}
                            cand = self.score(Candidate(base.key_steps, orders, settings), "per_segment")
                            best = cand if cand.score > best.score else best
            for _ in range(space.refine_passes):
                improved = False
                s = best.settings
                fixed = set(mandatory_steps(self.T, s["first_full_steps"], s["last_full_steps"]))
                for k in range(1, self.K):
                    if best.key_steps[k] in fixed:
                        continue
                    lo = best.key_steps[k - 1]
                    hi = best.key_steps[k + 1] if k + 1 < self.K else self.T
                    top = best
                    for d in range(1, space.refine_radius + 1):
                        for step in (best.key_steps[k] - d, best.key_steps[k] + d):
                            if lo < step < hi:
                                steps = best.key_steps[:k] + (step,) + best.key_steps[k + 1 :]
                                moves = [*s.get("moves", []), [best.key_steps[k], step]]
                                cand = self.score(
                                    Candidate(steps, best.segment_orders, {**s, "moves": moves}), "refine"
                                )
                                top = cand if cand.score > top.score else top
                    improved |= top is not best
                    best, s = top, top.settings
                if not improved:
                    break
        except _Stop as exc:
            self.stopped = str(exc)
        finally:
            self.bar.close()
        return best


def tune(
    pipe: Any,
    cost: Any,
    budget: int,
    prompts: Sequence[Any],
    *,
    seeds: Sequence[int] | None = None,
    num_inference_steps: int | None = None,
    prompt_to_kwargs: Callable[[Any], dict] | None = None,
    call_kwargs: dict | None = None,
    space: TuneSpace | None = None,
    model_id: str | None = None,
    weights_hash: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> TuneResult:
    """Search DPCache's settings for budget K on `prompts` (the calibration prompts) by the final output.

    Every candidate (solver, order, first/last full steps, extrapolation cap, per-segment orders, local
    moves of key steps — see `TuneSpace`) runs exactly K key steps on every prompt; its score is the mean
    PSNR of its outputs against the full-step outputs of the same prompts and seeds (sampled once). The
    search is deterministic; with `cache_dir` the references and every candidate's score are cached on
    disk under a content hash of the weights, prompts, seeds, call arguments, K, T and search space.

    Args:
        cost: the calibrated `CostTensor`, or {order: CostTensor} to plan each order on its own tensor
            (orders without one are planned on the highest-order tensor given).
        prompts: calibration prompts only; their hashes go into the schedule file.
        seeds: one per prompt (default 42 + i, as calibration).
        weights_hash: identifies the weights (default: hashed from the pipeline's components).

    Returns the chosen schedule (saved to `out` when given) and the number of samples run in this call.

    Example:
        >>> result = tune(pipe, CostTensor.load("flux_T50.safetensors"), 13, load_prompts("drawbench"),
        ...               cache_dir="tune-cache", out="tuned.json")
        >>> apply_dpcache(pipe, DPCacheConfig(schedule_file="tuned.json"))
    """
    from . import __version__
    from .calibration import prompt_hash

    space = space or TuneSpace()
    if not prompts:
        raise DPCacheError("tune needs at least one calibration prompt")
    seeds = list(seeds) if seeds is not None else [42 + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise DPCacheError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    tensors = dict(cost) if isinstance(cost, Mapping) else {int(cost.meta.predictor_order): cost}
    main = tensors[max(tensors)]
    T = int(num_inference_steps or main.num_steps)
    for t in tensors.values():
        t.check_compatible(num_steps=T, predictor="taylor")
    if isinstance(budget, bool) or int(budget) != budget or not 1 <= budget <= T:
        raise DPCacheError(f"budget K={budget!r} must be an integer in 1..T={T}")
    budget = int(budget)
    model_id = model_id or main.meta.model_id or type(pipe).__name__
    weights_hash = weights_hash or pipeline_fingerprint(pipe)
    to_kwargs = prompt_to_kwargs or (lambda p: {"prompt": p})
    kwargs = [{**(call_kwargs or {}), **to_kwargs(p)} for p in prompts]
    for kw in kwargs:
        kw.pop("num_inference_steps", None)
    released = {
        "solver": "official",
        "order": int(main.meta.predictor_order),
        "first_full_steps": int(main.meta.first_full_steps),
        "last_full_steps": int(main.meta.last_full_steps),
        "max_extrapolation": None,
    }
    key = _sha(
        {
            "v": TUNE_VERSION,
            "weights": weights_hash,
            "model": model_id,
            "T": T,
            "K": budget,
            "space": {k: v for k, v in space.to_dict().items() if k != "max_samples"},
            "released": released,
            "calls": [_canon(kw) for kw in kwargs],
            "seeds": seeds,
            "tensors": {o: hashlib.sha256(t.cost.tobytes()).hexdigest() for o, t in sorted(tensors.items())},
        }
    )
    search = Search(
        pipe,
        kwargs,
        seeds,
        T,
        budget,
        lambda order: _tensor_for(tensors, order),
        cache=Path(cache_dir) / f"{key[:24]}.json" if cache_dir is not None else None,
        ref_dir=Path(cache_dir) / "references" if cache_dir is not None else None,
        weights_hash=weights_hash,
        max_samples=space.max_samples,
        progress=progress,
    )
    best: Candidate = search.run(space, released)
    orders = best.segment_orders
    settings = dict(best.settings)
    settings["segment_orders_uniform"] = len(set(orders)) == 1
    result = ScheduleFile(
        model_id=model_id,
        weights_hash=weights_hash,
        num_steps=T,
        budget=budget,
        key_steps=list(best.key_steps),
        segment_orders=list(orders),
        predictor="taylor",
        predictor_order=max(orders),
        first_full_steps=int(settings["first_full_steps"]),
        last_full_steps=int(settings["last_full_steps"]),
        settings=settings,
        metric="psnr",
        calibration_score=round(float(best.score), 6),
        released_score=search.released_score,
        prompt_hashes=[prompt_hash(str(p)) for p in prompts],
        seeds=seeds,
        samples=search.samples_total,
        search_space=space.to_dict(),
        candidates=search.log,
        dpcache_version=__version__,
    )
    path = result.save(out) if out is not None else None
    return TuneResult(result, search.samples_run, path, search.stopped)


class _CallableModule(types.ModuleType):
    """`import dpcache.tune` binds the module as `dpcache.tune`; calling it runs `tune`."""

    def __call__(self, *args: Any, **kwargs: Any) -> TuneResult:
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["TuneResult", "TuneSpace", "pipeline_fingerprint", "tune"]
