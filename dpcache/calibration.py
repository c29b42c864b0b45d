"""Calibration: run a pipeline at full compute, record the last-block feature per step, build the cost tensor."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState

from . import __version__
from .adapters import block_layout
from .atomic_io import write_atomic
from .diffusers_internals import BlockIO
from .hook_utils import ContextStateManager, refresh_hook_tree, transformer_of
from .pact import cost_tensor_one, mean_finite
from .planner import default_max_jump
from .predictors import Predictor, TaylorPredictor

_RECORDER_HOOK = "dpcache_feature_recorder"


class _Features(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.features: list[torch.Tensor] = []


class FeatureRecorderHook(ModelHook):
    """On the last block: copies its hidden-state output to host memory at every step of one context."""

    _is_stateful = True

    def __init__(self, context: str | None) -> None:
        super().__init__()
        self.manager = ContextStateManager(_Features)
        self.context = context
        self.runs: list[list[torch.Tensor]] = []

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._io = BlockIO(module)
        return module

    def post_forward(self, module: torch.nn.Module, output):
        state = self.manager.get_state()
        name = self.manager.context.name
        if self.context is None or name in (self.context, "default"):
            hidden = output[self._io.hidden_index] if isinstance(output, tuple) else output
            state.features.append(hidden.detach().to("cpu", copy=True))
        return output

    def take(self) -> list[torch.Tensor]:
        """The features of the run that just ended (and forget them)."""
        for state in self.manager.states().values():
            if state.features:
                self.runs.append(state.features)
        self.manager.reset()
        runs, self.runs = self.runs, []
        if len(runs) != 1:
            raise RuntimeError(f"expected features of exactly one run, got {len(runs)}")
        return runs[0]

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        for state in self.manager.states().values():
            if state.features:
                self.runs.append(state.features)
        self.manager.reset()
        return module


def record_features(pipe, call: Callable[[], object], context: str | None = "cond") -> list[torch.Tensor]:
    """Run `call()` (a full-compute pipeline call) and return the last-block feature of every step, on host."""
    transformer = transformer_of(pipe)
    last = block_layout(transformer).last
    registry = HookRegistry.check_if_exists_or_initialize(last)
    hook = FeatureRecorderHook(context)
    registry.register_hook(hook, _RECORDER_HOOK)
    refresh_hook_tree(transformer)
    try:
        call()
        return hook.take()
    finally:
        registry.remove_hook(_RECORDER_HOOK, recurse=False)
        refresh_hook_tree(transformer)


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


PART_FORMAT = (
    2  # 2: parts keyed by one content hash of everything that changes them (was prompt/seed/T/model)
)


def call_fingerprint(value: object) -> object:
    """Plain JSON data standing for a call argument: arrays, tensors and images by the hash of their bytes."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value if not isinstance(value, float) else repr(value)
    if isinstance(value, dict):
        return {str(k): call_fingerprint(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [call_fingerprint(v) for v in value]
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        return {"tensor": str(t.dtype), "shape": list(t.shape), "sha": hashlib.sha256(raw).hexdigest()}
    if isinstance(value, np.ndarray) or hasattr(value, "tobytes"):
        arr = np.asarray(value)
        return {
            "array": str(arr.dtype),
            "shape": list(arr.shape),
            "sha": hashlib.sha256(arr.tobytes()).hexdigest(),
        }
    if isinstance(value, torch.dtype):
        return str(value)
    return f"{type(value).__name__}:{value!r}"


def weights_fingerprint(pipe) -> str:
    """sha256 over every module component's state dict (names, dtypes, shapes, bytes): part of each
    calibration part's key, so parts of other weights are never reused."""
    h = hashlib.sha256()
    components = getattr(pipe, "components", None) or {"transformer": transformer_of(pipe)}
    for name, comp in sorted(components.items()):
        if not hasattr(comp, "state_dict"):
            continue
        h.update(f"component {name}\0".encode())
        for key, t in sorted(comp.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\0".encode())
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def part_key(
    prompt: str,
    seed: int,
    num_steps: int,
    predictor: Predictor,
    model_id: str,
    *,
    weights: str,
    call: dict,
    dtype: str,
    context: str | None,
    max_jump: int | None,
    sentinel_alpha: float,
    device: str,
) -> str:
    """The canonical JSON of everything that changes a calibration part's content (prompt, seed, T, predictor
    and order, model id and weights hash, every call setting — resolution, frames, guidance … —, dtype,
    context, cost settings, device, part format)."""
    return json.dumps(
        {
            "part_format": PART_FORMAT,
            "prompt": prompt,
            "seed": int(seed),
            "num_steps": int(num_steps),
            "predictor": predictor.spec,
            "model_id": model_id,
            "weights": weights,
            "call": call_fingerprint(call),
            "dtype": dtype,
            "context": context,
            "max_jump": max_jump,
            "sentinel_alpha": repr(float(sentinel_alpha)),
            "device": device,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _part_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".npz"


def _load_part(path: Path, key: str, num_steps: int) -> np.ndarray | None:
    """A stored part made under exactly `key`, or None (absent, or unreadable: then recomputed, with a warning)."""
    import warnings

    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key, cost = str(data["key"]), data["cost"]
    except Exception as exc:  # truncated / not an npz / no key: never reused
        warnings.warn(
            f"{path}: unreadable calibration part ({type(exc).__name__}); computing it again", stacklevel=3
        )
        return None
    if stored_key != key or cost.shape != (num_steps, num_steps + 1, num_steps + 1):
        warnings.warn(f"{path}: calibration part made under other settings; computing it again", stacklevel=3)
        return None
    return cost


def _save_atomic_npz(path: Path, array: np.ndarray, key: str = "") -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, cost=array, key=np.array(key))

    write_atomic(path, write)


def calibrate(
    pipe,
    prompts: Sequence[str],
    *,
    num_inference_steps: int = 50,
    predictor: Predictor | None = None,
    out: str | os.PathLike | None = None,
    **kwargs,
):
    """Calibrate a pipeline: build its Path-Aware Cost Tensor from full-compute runs of `prompts`.

    Each prompt runs once at full compute with seed `seeds[i]` (default 42 + i); the last-block features
    are streamed to host memory and turned into that prompt's cost tensor, which is written to `work_dir`
    (atomically) so a killed calibration restarts from the prompts already done. A part is named by one
    content hash of everything that changes it (`part_key`: prompt, seed, T, predictor, model id, weights —
    `weights_id`, or the hash of every component's state dict —, every call setting, dtype, context, device),
    so a part made under other settings is never reused. The result is the
    per-cell mean over prompts, with metadata; it is saved to `out` when given. The other keyword arguments
    (`seeds`, `model_id`, `prompt_to_kwargs`, `call_kwargs`, `context`, `work_dir`, `max_jump`,
    `sentinel_alpha`, `first_full_steps`, `last_full_steps`, `device`, `progress`, `weights_id`) are
    `calibrate_predictors`'.

    Example:
        >>> ct = calibrate(pipe, load_prompts("drawbench", "fix", 10), model_id="black-forest-labs/FLUX.1-dev",
        ...                work_dir="calib-flux", out="flux_T50.safetensors")
    """
    predictor = predictor or TaylorPredictor(order=2)
    return calibrate_predictors(
        pipe, prompts, [predictor], num_inference_steps=num_inference_steps, outs=[out], **kwargs
    )[0]


def calibrate_predictors(
    pipe,
    prompts: Sequence[str],
    predictors: Sequence[Predictor],
    *,
    num_inference_steps: int = 50,
    seeds: Sequence[int] | None = None,
    model_id: str | None = None,
    prompt_to_kwargs: Callable[[str], dict] | None = None,
    call_kwargs: dict | None = None,
    context: str | None = "cond",
    work_dir: str | os.PathLike | None = None,
    max_jump: int | None = None,
    sentinel_alpha: float = 0.8,
    first_full_steps: int = 3,
    last_full_steps: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    outs: Sequence[str | os.PathLike | None] | None = None,
    weights_id: str | None = None,
) -> list:
    """`calibrate` for several predictors from one full-compute run per prompt: the features are recorded
    once and each predictor's cost tensor is built from them (the same tensors, bit for bit, as one
    `calibrate` per predictor, for a fraction of the sampling). Returns one `CostTensor` per predictor, each
    saved to `outs[i]` when given.

    Example:
        >>> o2, o1 = calibrate_predictors(pipe, prompts, [TaylorPredictor(order=2), TaylorPredictor(order=1)])
    """
    from tqdm.auto import tqdm

    from .cost_tensor import CostTensor

    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    if not predictors:
        raise ValueError("calibration needs at least one predictor")
    outs = list(outs) if outs is not None else [None] * len(predictors)
    if len(outs) != len(predictors):
        raise ValueError(f"got {len(outs)} outputs for {len(predictors)} predictors")
    seeds = list(seeds) if seeds is not None else [42 + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    model_id = (
        model_id or getattr(getattr(pipe, "config", None), "_name_or_path", None) or type(pipe).__name__
    )
    prompt_to_kwargs = prompt_to_kwargs or (lambda p: {"prompt": p})
    parts = Path(work_dir) if work_dir is not None else None
    if parts is not None:
        parts.mkdir(parents=True, exist_ok=True)
    costs: list[list[np.ndarray]] = [[] for _ in predictors]
    dtype = None
    transformer = transformer_of(pipe)
    param = next(transformer.parameters())
    model_dtype = str(param.dtype).replace("torch.", "")
    weights = (weights_id or weights_fingerprint(pipe)) if parts is not None else ""
    where = f"{param.device.type}|cost on {device or 'cpu'}"  # the pipeline's device, then the cost's
    bar = tqdm(list(zip(prompts, seeds)), desc="calibrating", unit="prompt", disable=not progress)
    for prompt, seed in bar:
        todo: list[tuple[int, Path | None, str | None]] = []  # (predictor index, part path, part key)
        call = {**(call_kwargs or {}), **prompt_to_kwargs(prompt)}
        for i, predictor in enumerate(predictors):
            part = key = None
            if parts is not None:
                key = part_key(
                    prompt,
                    seed,
                    num_inference_steps,
                    predictor,
                    model_id,
                    weights=weights,
                    call=call,
                    dtype=model_dtype,
                    context=context,
                    max_jump=max_jump,
                    sentinel_alpha=sentinel_alpha,
                    device=where,
                )
                part = parts / _part_name(key)
                found = _load_part(part, key, num_inference_steps)
                if found is not None:
                    costs[i].append(found)
                    continue
            todo.append((i, part, key))
        if not todo:
            continue

        def run(seed=seed, call=call):
            gen = torch.Generator("cpu").manual_seed(seed)
            return pipe(num_inference_steps=num_inference_steps, generator=gen, **call)

        feats = record_features(pipe, run, context=context)
        if len(feats) != num_inference_steps:
            raise RuntimeError(
                f"recorded {len(feats)} features for {num_inference_steps} steps: the transformer was called "
                "a different number of times than the step count (is the context name right?)"
            )
        dtype = str(feats[0].dtype).replace("torch.", "")
        for i, part, key in todo:
            cost = cost_tensor_one(
                feats, predictors[i], max_jump=max_jump, sentinel_alpha=sentinel_alpha, device=device
            )
            if part is not None:
                _save_atomic_npz(part, cost, key)
            costs[i].append(cost)
        del feats
    tensors = []
    for predictor, cost, out in zip(predictors, costs, outs):
        ct = CostTensor.from_array(
            mean_finite(cost),
            num_steps=num_inference_steps,
            model_id=model_id,
            predictor=predictor.name,
            predictor_order=predictor.order,
            cost_metric="l1",
            first_full_steps=first_full_steps,
            last_full_steps=last_full_steps,
            max_jump=default_max_jump(num_inference_steps) if max_jump is None else max_jump,
            sentinel_alpha=sentinel_alpha,
            prompt_hashes=[prompt_hash(p) for p in prompts],
            seeds=seeds,
            dtype=dtype or model_dtype,
            dpcache_version=__version__,
            source="calibrated",
        )
        if out is not None:
            ct.save(out)
        tensors.append(ct)
    return tensors
