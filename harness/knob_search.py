"""How the harness searches each baseline's knob for a budget: the values or range, scale, direction, monotonicity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KnobSearch:
    """The budget search of one method's knob (the method itself only says what its knob is and does).

    Args:
        knob_values: the discrete values of an integer knob (intervals): bisected over the sorted values when
            `knob_monotone`, else searched exhaustively; or None.
        knob_range: (lo, hi) of a continuous knob, bisected; or None. It should reach the method's saturation
            (the knob value beyond which nothing more is skipped), so the least compute it reports is the
            method's own floor, not the range's.
        knob_scale: with `knob_range`: bisect `asinh(knob / knob_scale)` (linear below the scale, logarithmic
            above), so a range up to saturation (1e3) still resolves small thresholds; None = linear.
        knob_monotone: compute is monotone in the knob (False for fixed-pattern methods whose call counter
            makes a larger interval skip fewer steps at some T: their values are searched exhaustively).
        compute_grows_with_knob: True if a larger knob means more full computations (intervals are the
            opposite: a larger interval means fewer).
    """

    knob_values: Sequence[float] | None = None
    knob_range: tuple[float, float] | None = None
    knob_scale: float | None = None
    knob_monotone: bool = True
    compute_grows_with_knob: bool = False


# every interval 1..50: N >= T - 1 computes step 0 only at T = 50
INTERVALS = KnobSearch(knob_values=tuple(range(1, 51)))
# thresholds up to saturation (1e3: every step after the warm-up skips), bisected on asinh(knob / 0.01)
SATURATING = KnobSearch(knob_range=(0.0, 1e3), knob_scale=0.01)
# PAB / FasterCache: `iteration % N` counts calls inside the timestep window, so compute is not monotone in N
WINDOW_COUNTERS = KnobSearch(knob_values=(1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 50), knob_monotone=False)

KNOB_SEARCH: dict[str, KnobSearch] = {
    "dbcache": SATURATING,
    "delta-dit": INTERVALS,
    "dicache": SATURATING,
    "easycache": KnobSearch(knob_range=(0.0, 5.0)),
    "fastercache": WINDOW_COUNTERS,
    "firstblockcache": SATURATING,
    "fora": INTERVALS,
    "magcache": SATURATING,
    "omnicache": KnobSearch(knob_range=(0.0, 1.0), compute_grows_with_knob=True),
    "pab": WINDOW_COUNTERS,
    "seacache": SATURATING,
    "taylorseer": INTERVALS,
    "teacache": KnobSearch(knob_range=(0.0, 5.0)),
    "toca": INTERVALS,
}


def knob_search(method: str) -> KnobSearch:
    """The search settings of a baseline by registry name (KeyError naming the ones known)."""
    if method not in KNOB_SEARCH:
        raise KeyError(f"no knob search settings for {method!r}; known: {', '.join(sorted(KNOB_SEARCH))}")
    return KNOB_SEARCH[method]
