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

from .errors import DPCacheError
from .schedule_file import ScheduleFile
from .tune_search import Candidate, Search, _canon, _sha, _tensor_for

TUNE_VERSION = 3  # bump when the search or its scoring changes: cached scores are then recomputed


@dataclass
class TuneSpace:
    """What `tune` searches, stage by stage from the released settings (each stage keeps the best so far).

    1. `solvers` × `orders` (each order planned on its own cost tensor when one is given);
    2. `first_full_steps`, 3. `last_full_steps`, 4. `max_extrapolation` (the longest run of predicted
    steps after a key step, i.e. the planner's max jump − 1; None = the released 0.3·T);
    5. `aligned`: BudCache's re-alignment of the time discretisation — key steps at the T-step grid's
    times nearest those of a plain K-step sampler, order 0 everywhere (that sampler, run on our grid's times);
    polished by stages 6 and 7 as a second branch beside the best planned schedule; `validation_prompts`
    choose between the two finished branches (else their calibration PSNR does). Off by default: a search
    fits the prompts it scores on — on 12 held-out probe prompts the aligned branch helped flux-tiny at K = 9
    (34.45 vs 32.05 dB) and hurt dit-tiny at K = 13 (28.14 vs 31.79) when chosen on the search prompts alone;
    6. `per_segment`: the order of each segment, one segment at a time;
    7. `refine_radius` d: move one key step by ±1..±d, keep the move when the error drops (K unchanged),
    for up to `refine_passes` passes over the key steps.
    `max_samples` caps the pipeline calls of the whole search (references included); None = no cap.
    """

    solvers: tuple[str, ...] = ("official", "exact")
    orders: tuple[int, ...] = (2, 1, 0)
    first_full_steps: tuple[int, ...] = (2, 3, 4)
    last_full_steps: tuple[int, ...] = (0, 1, 2)
    max_extrapolation: tuple[int | None, ...] = (None, 10, 7, 5)
    aligned: bool = False
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
    validation_prompts: Sequence[Any] = (),
    validation_seeds: Sequence[int] | None = None,
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
        validation_prompts: other calibration prompts (never evaluation ones) that choose between the search's
            branches (`TuneSpace.aligned`) by their own PSNR — the search fits the prompts it scores on; their
            hashes and each branch's validation PSNR go into the file's settings. Seeds default to 1042 + i.

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
    vseeds = (
        list(validation_seeds)
        if validation_seeds is not None
        else [1042 + i for i in range(len(validation_prompts))]
    )
    if len(vseeds) != len(validation_prompts):
        raise DPCacheError(
            f"got {len(vseeds)} validation seeds for {len(validation_prompts)} validation prompts"
        )
    overlap = {prompt_hash(str(p)) for p in prompts} & {prompt_hash(str(p)) for p in validation_prompts}
    if overlap:
        raise DPCacheError(
            f"{len(overlap)} validation prompt(s) are also search prompts: validate on other prompts"
        )
    kwargs = [{**(call_kwargs or {}), **to_kwargs(p)} for p in prompts]
    vkwargs = [{**(call_kwargs or {}), **to_kwargs(p)} for p in validation_prompts]
    for kw in kwargs + vkwargs:
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
            "validation": [[_canon(kw) for kw in vkwargs], vseeds] if vkwargs else None,
            "tensors": {o: hashlib.sha256(t.cost.tobytes()).hexdigest() for o, t in sorted(tensors.items())},
        }
    )

    def searcher(calls: list[dict], call_seeds: list[int], suffix: str, cap: int | None) -> Search:
        return Search(
            pipe,
            calls,
            call_seeds,
            T,
            budget,
            lambda order: _tensor_for(tensors, order),
            cache=Path(cache_dir) / f"{key[:24]}{suffix}.json" if cache_dir is not None else None,
            ref_dir=Path(cache_dir) / "references" if cache_dir is not None else None,
            weights_hash=weights_hash,
            max_samples=cap,
            progress=progress,
        )

    search = searcher(kwargs, seeds, "", space.max_samples)
    validation = searcher(vkwargs, vseeds, "-validation", None) if vkwargs else None
    best: Candidate = search.run(space, released, validation)
    orders = best.segment_orders
    settings = dict(best.settings)
    settings["segment_orders_uniform"] = len(set(orders)) == 1
    if vkwargs:
        settings["validation_prompt_hashes"] = [prompt_hash(str(p)) for p in validation_prompts]
        settings["validation_seeds"] = vseeds
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
