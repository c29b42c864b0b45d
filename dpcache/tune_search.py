"""The staged search behind `dpcache.tune`: candidates, their cached PSNR scores, the stages of `TuneSpace`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic_io import write_atomic, write_text_atomic
from .errors import DPCacheError
from .quality import psnr_db

if TYPE_CHECKING:
    from .tune import TuneSpace


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


def _tensor_for(cost: Any, order: int) -> Any:
    if isinstance(cost, Mapping):
        return cost.get(order, cost[max(cost)])
    return cost


def _save_npy(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to the temp path
        np.save(fh, array)


class _Stop(Exception):
    """The sample cap was reached."""


class _Abort(Exception):
    """Raised by a pre-hook at the transformer's first call: the scheduler's timesteps are set by then."""


def _abort(*_: Any, **__: Any) -> None:
    raise _Abort


def aligned_key_steps(grid: Any, coarse: Any) -> tuple[int, ...]:
    """The T-step grid's indices nearest each timestep of a plain K-step sampler (BudCache's re-alignment).

    Step 0 is always kept; an index already taken moves to the next free one, so there are exactly K.
    """
    grid = np.asarray(grid, dtype=np.float64)
    T, taken = len(grid), {0}
    for t in list(np.asarray(coarse, dtype=np.float64))[1:]:
        i = int(np.argmin(np.abs(grid - t)))
        while i in taken and i < T - 1:
            i += 1
        if i in taken:
            raise DPCacheError(f"cannot place {len(coarse)} aligned key steps on a {T}-step grid")
        taken.add(i)
    return tuple(sorted(taken))


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
                write_atomic(path, lambda tmp, ref=ref: _save_npy(tmp, ref))
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
                    out = self._sample(i)
                    for name, run in dpcache_stats(self.pipe).items():
                        if run.computed_steps != list(cand.key_steps):  # the budget is exactly K
                            raise DPCacheError(
                                f"context {name!r} computed {run.computed_steps}, not the schedule"
                            )
                    values.append(psnr_db(out, ref))  # capped at 100 dB
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
        if self.cache is not None:
            write_text_atomic(self.cache, json.dumps(self.scores, sort_keys=True))

    def timesteps(self, n: int) -> np.ndarray:
        """The timesteps the pipeline's scheduler uses for an n-step call (no denoising step is run)."""
        import torch

        handle = self.pipe.transformer.register_forward_pre_hook(_abort)
        try:
            gen = torch.Generator("cpu").manual_seed(int(self.seeds[0]))
            self.pipe(num_inference_steps=n, generator=gen, **{**self.kwargs[0], "output_type": "np"})
        except _Abort:
            pass
        finally:
            handle.remove()
        return np.asarray(self.pipe.scheduler.timesteps, dtype=np.float64)[:n]

    def aligned(self, settings: dict[str, Any], stage: str) -> Candidate | None:
        """Key steps on the grid times nearest a plain K-step sampler's, order 0 (that sampler on our grid)."""
        try:
            steps = aligned_key_steps(self.timesteps(self.T), self.timesteps(self.K))
        except DPCacheError as exc:
            self.log.append({"stage": stage, "settings": settings, "psnr": None, "note": str(exc)})
            return None
        settings = {**settings, "aligned": True, "order": 0, "first_full_steps": 1, "last_full_steps": 0,
                    "max_extrapolation": None}  # fmt: skip
        return self.score(Candidate(steps, (0,) * self.K, settings), stage)

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

    def polish(self, best: Candidate, space: TuneSpace) -> Candidate:
        """Stages `per_segment` and `refine` from one starting schedule (each keeps the best so far)."""
        from .planner import mandatory_steps

        self.current = best
        if space.per_segment and len(space.orders) > 1:
            for k in range(self.K):
                end = best.key_steps[k + 1] if k + 1 < self.K else self.T
                if end - best.key_steps[k] < 2:
                    continue  # nothing is predicted after this key step
                base = best
                for o in space.orders:
                    if o != base.segment_orders[k]:
                        orders = (*base.segment_orders[:k], o, *base.segment_orders[k + 1 :])
                        settings = {**base.settings, "segment_orders": list(orders)}
                        cand = self.score(Candidate(base.key_steps, orders, settings), "per_segment")
                        best = self.current = cand if cand.score > best.score else best
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
                            steps = (*best.key_steps[:k], step, *best.key_steps[k + 1 :])
                            moves = [*s.get("moves", []), [best.key_steps[k], step]]
                            cand = self.score(
                                Candidate(steps, best.segment_orders, {**s, "moves": moves}), "refine"
                            )
                            top = cand if cand.score > top.score else top
                improved |= top is not best
                best, s = top, top.settings
                self.current = best
            if not improved:
                break
        return best

    def choose(self, finals: list[Candidate], validation: Search | None) -> Candidate:
        """The best branch: by the validation prompts' PSNR when given (and more than one branch), else by the
        calibration PSNR. Validation scores are logged (stage "validation") and kept in the settings."""
        best = max(finals, key=lambda c: c.score)
        if validation is None or len(finals) < 2:
            return best
        if self.max_samples is not None:
            validation.max_samples = max(0, self.max_samples - self.samples_total)
        try:
            validation.refs = validation.references()
            scores = [validation.score(Candidate(c.key_steps, c.segment_orders, c.settings), "validation").score
                      for c in finals]  # fmt: skip
        except _Stop:
            return best
        finally:
            validation.bar.close()
            self.samples_total += validation.samples_total
            self.samples_run += validation.samples_run
        self.log += validation.log
        pick = finals[int(np.argmax(scores))]
        branches = [c.settings.get("branch", "planned") for c in finals]
        pick.settings = {
            **pick.settings,
            "validation_psnr": {b: round(v, 6) for b, v in zip(branches, scores, strict=True)},
        }
        return pick

    def run(self, space: TuneSpace, released: dict[str, Any], validation: Search | None = None) -> Candidate:
        """The staged search; stops early (keeping the best so far) when the sample cap is reached.

        With `space.aligned` two branches are polished (per-segment orders, key-step moves): from the best
        planned schedule and from the aligned one; `validation` (other calibration prompts) picks between them.
        """
        try:
            self.refs = self.references()
            best = self.planned(released, "released")
            if best is None:
                raise DPCacheError(f"the released settings cannot plan K={self.K}: {self.log[-1]['note']}")
            self.released_score = round(best.score, 6)
        except _Stop as exc:
            raise DPCacheError(f"{exc} before the released settings were scored; raise max_samples") from None
        finals: list[Candidate] = []
        self.current = best
        try:
            grid = [("solver+order", {"solver": s, "order": o}) for s in space.solvers for o in space.orders]
            grid += [("first_full_steps", {"first_full_steps": v}) for v in space.first_full_steps]
            grid += [("last_full_steps", {"last_full_steps": v}) for v in space.last_full_steps]
            grid += [("max_extrapolation", {"max_extrapolation": v}) for v in space.max_extrapolation]
            for stage, change in grid:
                settings = {**best.settings, **change}
                if settings != best.settings:
                    cand = self.planned(settings, stage)
                    best = self.current = cand if cand is not None and cand.score > best.score else best
            starts = [best]
            if space.aligned and 1 < self.K < self.T:
                cand = self.aligned(best.settings, "aligned")
                if cand is not None:
                    cand.settings["branch"] = "aligned"
                    starts.append(cand)
            for start in starts:
                finals.append(self.polish(start, space))
            best = self.choose(finals, validation)
        except _Stop as exc:
            self.stopped = str(exc)
            best = max([*finals, self.current], key=lambda c: c.score)
        finally:
            self.bar.close()
        return best
