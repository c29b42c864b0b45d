"""Feature predictors: fill a skipped step from the features of the key steps before it."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch

_FP16_MAX = 65504.0


class Predictor(ABC):
    """Predicts the last-block feature at a skipped step from what it saw at key steps.

    `update(step, feature)` is called at every key step (full compute), `predict(step)` at every skipped
    step after it. Calibration and inference must use the same predictor: its `spec` is written into the
    cost tensor's metadata and checked when the tensor is used.
    """

    name: str = "predictor"
    order: int = 0

    @abstractmethod
    def reset(self) -> None:
        """Forget every feature seen so far (a new sample starts)."""

    @abstractmethod
    def update(self, step: int, feature: torch.Tensor) -> None:
        """Record the feature computed at key step `step`."""

    @abstractmethod
    def predict(self, step: int) -> torch.Tensor:
        """Predict the feature at skipped step `step` (after the last key step seen)."""

    @abstractmethod
    def clone(self, **overrides) -> Predictor:
        """A fresh predictor with the same settings (and no state), some of them overridden."""

    @abstractmethod
    def calibration_history(self, anchor: int) -> list[int]:
        """Steps whose features calibration feeds before the current key step, given the previous key step."""

    @property
    def spec(self) -> dict[str, object]:
        """Name and order, as recorded in a cost tensor's metadata."""
        return {"name": self.name, "order": self.order}


def taylor_update(
    factors: list[torch.Tensor], feature: torch.Tensor, distance: int, order: int
) -> list[torch.Tensor]:
    """Backward divided differences: new factors from the previous ones and a feature `distance` steps later."""
    new = [feature]
    for k in range(min(order, len(factors))):
        new.append((new[k] - factors[k]) / distance)
    return new


def taylor_evaluate(factors: Sequence[torch.Tensor], distance: int) -> torch.Tensor:
    """`sum_k F_k d^k / k!`: the Taylor expansion of the factors `distance` steps ahead."""
    out = factors[0]
    for k in range(1, len(factors)):
        out = out + factors[k] * (distance**k / math.factorial(k))
    return out


class TaylorPredictor(Predictor):
    """TaylorSeer-style finite differences over the real distances between key steps (DPCache's predictor).

    At key step `s` with previous key step `s'`: `F0 = h_s`, `F_{k+1} = (F_k - F_k_old) / (s - s')`; at a
    skipped step `t`: `h_t ~ sum_k F_k d^k / k!`, `d = t - s`. As released, difference terms are only formed
    at key steps `s >= derivative_start` (the released gate `s > first_full_steps - 2`); calibration uses no
    gate (`derivative_start=0`). Factors are kept in float32 when the model runs in fp16/bf16, and an fp16
    prediction is clipped to the fp16 range before it is cast back.

    Args:
        order: highest difference order (0 = plain reuse of the last key feature; 1, 2, 3 …).
        derivative_start: first key step at which difference terms may be formed.
        segment_orders: optional order per segment, keyed by the key step the segment starts at: the
            steps predicted after key step `s` use the first `segment_orders[s] + 1` factors (exactly the
            prediction of an order-`segment_orders[s]` predictor); segments not listed use `order`.
    """

    name = "taylor"

    def __init__(
        self, order: int = 2, derivative_start: int = 0, segment_orders: Mapping[int, int] | None = None
    ) -> None:
        if not isinstance(order, int) or order < 0:
            raise ValueError(f"TaylorPredictor order must be an integer >= 0, got {order!r}")
        seg = {int(s): int(o) for s, o in (segment_orders or {}).items()}
        bad = {s: o for s, o in seg.items() if not 0 <= o <= order}
        if bad:
            raise ValueError(f"segment orders must lie in 0..{order} (the predictor's order), got {bad}")
        self.order = order
        self.derivative_start = derivative_start
        self.segment_orders = seg
        self.reset()

    def reset(self) -> None:
        self._factors: list[torch.Tensor] = []
        self._last_step: int | None = None
        self._dtype: torch.dtype | None = None

    def update(self, step: int, feature: torch.Tensor) -> None:
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"key steps must increase: got step {step} after {self._last_step}")
        self._dtype = feature.dtype
        work = feature.float() if feature.dtype in (torch.float16, torch.bfloat16) else feature
        if self._last_step is None or step < self.derivative_start:
            self._factors = [work]
        else:
            self._factors = taylor_update(self._factors, work, step - self._last_step, self.order)
        self._last_step = step

    def predict(self, step: int) -> torch.Tensor:
        if self._last_step is None:
            raise RuntimeError("TaylorPredictor.predict called before any key step was seen")
        if step <= self._last_step:
            raise ValueError(f"cannot predict step {step}: the last key step is {self._last_step}")
        factors = self._factors
        if self.segment_orders:
            factors = factors[: self.segment_orders.get(self._last_step, self.order) + 1]
        out = taylor_evaluate(factors, step - self._last_step)
        if self._dtype == torch.float16:
            out = out.clamp(-_FP16_MAX, _FP16_MAX)
        return out.to(self._dtype)

    def clone(self, **overrides) -> TaylorPredictor:
        kwargs = {
            "order": self.order,
            "derivative_start": self.derivative_start,
            "segment_orders": self.segment_orders,
            **overrides,
        }
        return TaylorPredictor(**kwargs)

    def calibration_history(self, anchor: int) -> list[int]:
        # The released calibration stands in h_{a-1}, h_{a-2} … for the real earlier key steps.
        return list(range(anchor - max(self.order - 1, 0), anchor + 1))

    def __repr__(self) -> str:
        seg = f", segment_orders={self.segment_orders}" if self.segment_orders else ""
        return f"TaylorPredictor(order={self.order}, derivative_start={self.derivative_start}{seg})"


def make_predictor(name: str, order: int, derivative_start: int = 0) -> Predictor:
    """Build a predictor from the name and order stored in a cost tensor's metadata."""
    if name == "taylor":
        return TaylorPredictor(order=order, derivative_start=derivative_start)
    raise ValueError(f"unknown predictor {name!r}; known: 'taylor'")
