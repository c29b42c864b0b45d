"""Predictors and the Path-Aware Cost Tensor, checked against the released formulas written out by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dpcache import TaylorPredictor, build_cost_tensor
from dpcache.pact import cost_tensor_one, mean_finite, sentinel_target


def _poly_features(T: int, coeffs, shape=(3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in coeffs]
    return [sum(c * b * t**k for k, (c, b) in enumerate(zip(coeffs, basis))) for t in range(T)]


@pytest.mark.parametrize("order", [0, 1])
def test_taylor_is_exact_on_polynomials_of_its_order(order):
    # (backward differences are exact for constants and lines; from order 2 on the released rule is an
    # approximation, checked against the formula below)
    feats = _poly_features(30, [1.0] * (order + 1))
    p = TaylorPredictor(order=order)
    for s in (0, 3, 7, 12):
        p.update(s, feats[s])
    for t in (13, 15, 20):
        assert torch.allclose(p.predict(t), feats[t], rtol=1e-9, atol=1e-9)


def test_taylor_matches_released_formula_order2():
    feats = _poly_features(20, [0.3, -1.0, 0.5, 0.2])  # cubic: order 2 is not exact, so the formula matters
    p = TaylorPredictor(order=2)
    for s in (2, 5, 9):
        p.update(s, feats[s])
    f1_old = (feats[5] - feats[2]) / 3
    f1 = (feats[9] - feats[5]) / 4
    f2 = (f1 - f1_old) / 4
    for t in (10, 13):
        d = t - 9
        assert torch.allclose(p.predict(t), feats[9] + f1 * d + f2 * d**2 / 2)


def test_taylor_order3_is_the_recursive_difference_rule():
    feats = _poly_features(30, [0.1, 1.0, -0.5, 0.2, 0.03])
    steps = (1, 4, 6, 11)
    p = TaylorPredictor(order=3)
    for s in steps:
        p.update(s, feats[s])
    h = [feats[s] for s in steps]
    d = [steps[k + 1] - steps[k] for k in range(3)]
    f1 = [(h[k + 1] - h[k]) / d[k] for k in range(3)]
    f2 = [(f1[k + 1] - f1[k]) / d[k + 1] for k in range(2)]
    f3 = (f2[1] - f2[0]) / d[2]
    x = 5
    expected = h[3] + f1[2] * x + f2[1] * x**2 / 2 + f3 * x**3 / 6
    assert torch.allclose(p.predict(11 + x), expected)


def test_warmup_gate_forms_no_difference_before_its_step():
    feats = _poly_features(10, [1.0, 1.0])
    p = TaylorPredictor(order=2, derivative_start=2)  # released gate for first_full_steps=3
    p.update(0, feats[0])
    p.update(1, feats[1])
    assert torch.equal(p.predict(3), feats[1])  # step 1 keeps only F0
    p.update(2, feats[2])
    assert torch.allclose(p.predict(4), feats[2] + (feats[2] - feats[1]) * 2)


def test_half_precision_predicts_in_float32_and_clips():
    p = TaylorPredictor(order=1)
    p.update(0, torch.full((4,), 60000.0, dtype=torch.float16))
    p.update(1, torch.full((4,), 65000.0, dtype=torch.float16))
    out = p.predict(3)
    assert out.dtype == torch.float16 and torch.isfinite(out).all() and float(out[0]) == 65504.0
    p16 = TaylorPredictor(order=2)
    for s in (0, 1, 2):
        p16.update(s, torch.full((2,), 1.0 + s * 1e-3, dtype=torch.bfloat16))
    assert p16._factors[0].dtype == torch.float32


def test_predictor_errors():
    p = TaylorPredictor(order=2)
    with pytest.raises(RuntimeError, match="before any key step"):
        p.predict(3)
    p.update(4, torch.zeros(2))
    with pytest.raises(ValueError, match="must increase"):
        p.update(4, torch.zeros(2))
    with pytest.raises(ValueError, match="cannot predict"):
        p.predict(2)
    with pytest.raises(ValueError, match="order"):
        TaylorPredictor(order=-1)


def _released_cost(feats, alpha=0.8):
    """The released order-2 calibration, written out directly from the paper's code description."""
    T = len(feats)
    h = [f.double() for f in feats]
    max_jump = max(int(0.3 * T), 1)
    f1 = h[T - 1] - h[T - 2]
    f2 = f1 - (h[T - 2] - h[T - 3])
    sentinel = alpha * (h[T - 1] + f1 + f2 / 2) + (1 - alpha) * torch.stack(h[T - 3 :]).mean(0)
    gt = [*h, sentinel]
    C = np.full((T, T + 1, T + 1), np.inf)
    C[0, 0, 1] = 0
    C[0:2, 1, 2] = 0
    for i in range(2, T):
        for a in range(max(1, i - max_jump), i):
            F1 = (h[i] - h[a]) / (i - a)
            F2 = (F1 - (h[a] - h[a - 1])) / (i - a)
            acc = 0.0
            for j in range(i + 1, T + 1):
                d = j - i
                pred = h[i] + F1 * d + F2 * d * d / 2
                acc += float((pred / 2 - gt[j] / 2).abs().mean())
                C[a, i, j] = acc
    return C


def test_cost_tensor_matches_released_calibration():
    feats = [f.float() for f in _poly_features(16, [1.0, 0.4, -0.2, 0.05], shape=(4, 6))]
    ours = cost_tensor_one(feats, TaylorPredictor(order=2))
    ref = _released_cost(feats)
    assert np.array_equal(np.isinf(ours), np.isinf(ref))
    finite = np.isfinite(ref)
    assert np.allclose(ours[finite], ref[finite], rtol=1e-5, atol=1e-6)


def test_sentinel_target_formula():
    feats = [f.float() for f in _poly_features(8, [1.0, 1.0, 1.0])]
    target = sentinel_target(feats, TaylorPredictor(order=2), alpha=0.8)
    quad_next = feats[7] + (feats[7] - feats[6]) + ((feats[7] - feats[6]) - (feats[6] - feats[5])) / 2
    assert torch.allclose(target, 0.8 * quad_next + 0.2 * torch.stack(feats[5:]).mean(0))


def test_mean_over_prompts_ignores_inf():
    a = np.array([[1.0, np.inf], [np.inf, np.inf]])
    b = np.array([[3.0, 2.0], [np.inf, np.inf]])
    out = mean_finite([a, b])
    assert out[0, 0] == 2.0 and out[0, 1] == 2.0 and math.isinf(out[1, 0])


def test_build_cost_tensor_metadata_and_planning():
    from dpcache import plan

    samples = [[f.float() for f in _poly_features(20, [1.0, 0.5, -0.3], seed=s)] for s in range(2)]
    ct = build_cost_tensor(samples, TaylorPredictor(order=2), model_id="toy", first_full_steps=3)
    assert ct.cost.shape == (20, 21, 21)
    assert ct.meta.num_steps == 20 and ct.meta.predictor == "taylor" and ct.meta.predictor_order == 2
    assert ct.meta.max_jump == 6 and ct.meta.sentinel_alpha == 0.8
    sched = plan(ct, 8, first_full_steps=3)
    assert sched.key_steps[:3] == (0, 1, 2) and len(sched.key_steps) == 8


def test_build_cost_tensor_rejects_ragged_samples():
    with pytest.raises(ValueError, match="same number of steps"):
        build_cost_tensor([[torch.zeros(2)] * 6, [torch.zeros(2)] * 7])


@pytest.mark.parametrize("order", [0, 1])
def test_low_order_cost_tensors_are_exact_and_plannable(order):
    """Orders 0 and 1 need no stand-in history: C[a, i, j] is exactly the error of predicting from key
    steps a and i (order 0: from i alone, step 0 entered from the planner's start). Every schedule's path
    cost is then the sum of its real per-step errors, and the planner's optimum is the brute-force one."""
    from itertools import combinations

    from dpcache import plan
    from dpcache.planner import path_cost

    T, K = 12, 5
    feats = [f.float() for f in _poly_features(T, [1.0, 0.6, -0.4, 0.1], shape=(3, 4))]
    ct = build_cost_tensor(feats, TaylorPredictor(order=order), max_jump=T)
    h = [f.double() for f in feats] + [sentinel_target(feats, TaylorPredictor(order=order)).double()]

    def real_cost(keys):
        total, nodes = 0.0, [*keys, T]
        for n, (i, nxt) in enumerate(itertools.pairwise(nodes)):
            if n < order:  # the forced first transitions cost 0 by the released rule
                continue
            slope = (h[i] - h[nodes[n - 1]]) / (i - nodes[n - 1]) if order and n else 0 * h[i]
            for j in range(i + 1, nxt + 1):
                total += float(((h[i] + slope * (j - i)) / 2 - h[j] / 2).abs().mean())
        return total

    first = 1 + order  # orders >= 1 force their first `order` steps (the released rule)
    schedules = [(*range(first), *rest) for rest in combinations(range(first, T), K - first)]
    for keys in schedules[:: max(1, len(schedules) // 25)]:
        assert path_cost(ct, keys) == pytest.approx(real_cost(keys), rel=1e-5)
    best = min(schedules, key=real_cost)
    assert plan(ct, K, first_full_steps=1, max_jump=T).key_steps == best
