"""Noise-aware timing comparison, asv-style: a ratio of medians beyond a size factor AND a significant
one-sided Mann-Whitney U test (exact without ties for small samples, normal approximation otherwise)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.002  # asv's significance level: survives dozens of comparisons per run


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _u_exact_cdf(u: float, n1: int, n2: int) -> float:
    """P(U <= u) under H0 for sample sizes n1, n2 (no ties), by counting arrangements."""
    # counts[m][n][k]: arrangements of m and n with U = k, computed by dynamic programming.
    table: dict[tuple[int, int], list[int]] = {}

    def dist(m: int, n: int) -> list[int]:
        if (m, n) in table:
            return table[(m, n)]
        if m == 0 or n == 0:
            res = [1]
        else:
            a, b = dist(m - 1, n), dist(m, n - 1)  # largest value from sample 1 (adds n) or sample 2
            res = [0] * (m * n + 1)
            for k, c in enumerate(a):
                res[k + n] += c
            for k, c in enumerate(b):
                res[k] += c
        table[(m, n)] = res
        return res

    d = dist(n1, n2)
    return sum(d[: math.floor(u) + 1]) / sum(d)


def mann_whitney_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for 'a tends to be greater than b' (exact for small samples
    without ties, normal approximation with tie correction otherwise)."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 1.0
    ranks = _ranks(list(a) + list(b))
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    ties = len(set(list(a) + list(b))) < n1 + n2
    if not ties and n1 * n2 <= 400:
        return 1.0 - _u_exact_cdf(u1 - 1, n1, n2)  # P(U >= u1)
    n = n1 + n2
    counts: dict[float, int] = {}
    for v in list(a) + list(b):
        counts[v] = counts.get(v, 0) + 1
    tie_term = sum(t**3 - t for t in counts.values()) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term))
    if sigma == 0:
        return 1.0
    z = (u1 - n1 * n2 / 2 - 0.5) / sigma
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class TimingComparison:
    """Candidate vs baseline samples of a higher-is-better (or lower-is-better) timing quantity."""

    ratio: float  # median(candidate) / median(baseline)
    p_value: float  # one-sided, in the bad direction
    regressed: bool


def compare_samples(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    better: str,
    factor: float = 1.1,
    alpha: float = ALPHA,
) -> TimingComparison:
    """asv-style rule: a regression needs both a ratio of medians worse than `factor` AND a significant
    one-sided Mann-Whitney U test (p < alpha) in the bad direction."""
    mb, mc = statistics.median(baseline), statistics.median(candidate)
    ratio = mc / mb if mb else math.inf
    if better == "higher":
        p = mann_whitney_greater(baseline, candidate)
        worse = ratio < 1 / factor
    else:
        p = mann_whitney_greater(candidate, baseline)
        worse = ratio > factor
    return TimingComparison(ratio, p, bool(worse and p < alpha))


def min_p_value(n1: int, n2: int) -> float:
    """The smallest one-sided exact p-value samples of sizes n1, n2 can give (all of one above the other):
    below `ALPHA` only with enough samples (5 against 5 gives 1/252 = 0.004: never significant at 0.002)."""
    return 1.0 / math.comb(n1 + n2, n1) if n1 and n2 else 1.0
