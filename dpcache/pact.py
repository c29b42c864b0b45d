"""Build the Path-Aware Cost Tensor C[a, i, j] from the last-block features of full-compute runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .planner import default_max_jump
from .predictors import Predictor, TaylorPredictor


def _l1_cost(pred: torch.Tensor, target: torch.Tensor) -> float:
    # The released metric: mean |pred/2 - target/2|, evaluated in float32.
    return float((pred.float() - target.float()).abs().mean()) * 0.5


def sentinel_target(
    features: Sequence[torch.Tensor], predictor: Predictor, alpha: float = 0.8
) -> torch.Tensor:
    """Stand-in "ground truth" for the sentinel step T, which makes the planner pay for a long predicted tail.

    `alpha * predict(T from the last order+1 steps) + (1 - alpha) * mean(those steps)`, as released
    (without the released 1e-8 random jitter, so calibration is deterministic).
    """
    num_steps = len(features)
    tail = list(range(max(num_steps - 1 - predictor.order, 0), num_steps))
    p = predictor.clone(derivative_start=0)
    for s in tail:
        p.update(s, features[s].float())
    pred = p.predict(num_steps).float()
    mean = torch.stack([features[s].float() for s in tail]).mean(0)
    return alpha * pred + (1 - alpha) * mean


def cost_tensor_one(
    features: Sequence[torch.Tensor],
    predictor: Predictor,
    *,
    max_jump: int | None = None,
    sentinel_alpha: float = 0.8,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """C[a, i, j] for one calibration sample, exactly as the released `calc_cost_matrix_v2`.

    `features[t]` is the last-block feature at step t (execution order). `a` is the previous key step, `i`
    the current one, `j` the last predicted step (i < j <= T, T = the sentinel). Only anchors with
    `i - a <= max_jump` are filled; `C[:i+1, i, i+1] = 0` for `i < order` forces the first steps to be key.
    """
    num_steps = len(features)
    order = predictor.order
    if num_steps < order + 2:
        raise ValueError(f"calibration needs at least order + 2 = {order + 2} steps, got {num_steps}")
    max_jump = default_max_jump(num_steps) if max_jump is None else max_jump
    dev = torch.device(device) if device is not None else features[0].device

    def feat(t: int) -> torch.Tensor:
        return features[t].to(dev, torch.float32)

    targets = [feat(t) for t in range(num_steps)]
    targets.append(sentinel_target(targets, predictor, sentinel_alpha))
    cost = np.full((num_steps, num_steps + 1, num_steps + 1), np.inf)
    for i in range(order):
        cost[: i + 1, i, i + 1] = 0.0
    base = predictor.clone(derivative_start=0)
    for i in range(order, num_steps):
        # step 0 has no earlier key step: the planner enters it from the virtual anchor 0 (only order 0
        # reaches here with i = 0; higher orders force their first steps above)
        for anchor in range(max(0, i - max_jump), i) if i else (0,):
            history = predictor.calibration_history(anchor) if i else []
            if history and history[0] < 0:
                continue
            p = base.clone()
            for s in history:
                p.update(s, targets[s])
            p.update(i, targets[i])
            total = 0.0
            for j in range(i + 1, num_steps + 1):
                total += _l1_cost(p.predict(j), targets[j])
                cost[anchor, i, j] = total
    return cost


def mean_finite(tensors: Sequence[np.ndarray]) -> np.ndarray:
    """Per-cell mean over the finite values of several per-sample tensors (inf where none is finite)."""
    stack = np.stack(tensors)
    finite = np.isfinite(stack)
    counts = finite.sum(axis=0)
    sums = np.where(finite, stack, 0.0).sum(axis=0)
    out = np.full(stack.shape[1:], np.inf)
    np.divide(sums, counts, out=out, where=counts > 0)
    return out


def build_cost_tensor(
    features: Sequence[Sequence[torch.Tensor]] | Sequence[torch.Tensor],
    predictor: Predictor | None = None,
    *,
    max_jump: int | None = None,
    sentinel_alpha: float = 0.8,
    device: torch.device | str | None = None,
    **meta,
):
    """Build a `CostTensor` from per-step features of one or several calibration samples.

    Args:
        features: per sample, the T last-block features in step order (a single sample may be passed
            as a plain list of T tensors).
        predictor: the predictor inference will use (default `TaylorPredictor(order=2)`).
        max_jump: longest anchor distance that is filled (default `max(int(0.3 T), 1)`).
        sentinel_alpha: weight of the Taylor extrapolation in the sentinel's target (released: 0.8).
        device: where to evaluate predictions (default: where the features are).
        **meta: further `CostTensorMeta` fields (model_id, prompt_hashes, seeds, first_full_steps …).

    Example:
        >>> feats = [torch.randn(4, 8) * t for t in range(10)]
        >>> ct = build_cost_tensor(feats, TaylorPredictor(order=2), model_id="toy")
        >>> ct.cost.shape
        (10, 11, 11)
    """
    from .cost_tensor import CostTensor

    predictor = predictor or TaylorPredictor(order=2)
    samples = [features] if isinstance(features[0], torch.Tensor) else list(features)
    lengths = {len(s) for s in samples}
    if len(lengths) != 1:
        raise ValueError(
            f"every calibration sample must have the same number of steps, got {sorted(lengths)}"
        )
    per_sample = [
        cost_tensor_one(s, predictor, max_jump=max_jump, sentinel_alpha=sentinel_alpha, device=device)
        for s in samples
    ]
    num_steps = lengths.pop()
    meta.setdefault("dtype", str(samples[0][0].dtype).replace("torch.", ""))
    return CostTensor.from_array(
        mean_finite(per_sample),
        num_steps=num_steps,
        predictor=predictor.name,
        predictor_order=predictor.order,
        cost_metric="l1",
        max_jump=default_max_jump(num_steps) if max_jump is None else max_jump,
        sentinel_alpha=sentinel_alpha,
        **meta,
    )
