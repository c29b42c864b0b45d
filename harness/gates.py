"""Regression gates: compare result records with the committed `suites/<suite>/expected.json`
(direction-aware, per-metric tolerances); noise-aware timing gates (asv-style); explicit updates only."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.metrics import Unavailable
from harness.records import ResultRecord

HIGHER_IS_BETTER = {
    "psnr",
    "ssim",
    "ms_ssim",
    "flops_speedup",
    "wall_speedup",
    "adherence",
    "image_reward",
    "clip_score",
    "vbench",
}
LOWER_IS_BETTER = {"lpips", "fid", "peak_mem", "flops"}
# Metrics measured by wall-clock: gated only with `gate_timing=True`, and then noise-aware.
TIMING_METRICS = {"wall_speedup", "wall_time"}
DEFAULT_TOLERANCES: dict[str, float] = {
    "flops_speedup": 0.01,
    "psnr": 0.5,
    "ssim": 0.01,
    "ms_ssim": 0.01,
    "lpips": 0.01,
    "adherence": 0.02,
    "wall_speedup": 0.25,
}
Expected = dict[str, dict[str, dict[str, Any]]]


class ExpectedFormatError(ValueError):
    """expected.json does not follow `{config_tag: {metric: {"value", "tol", "better"}}}`."""


@dataclass(frozen=True)
class GateFailure:
    """One metric of one config that missed its expectation (or could not be measured)."""

    config_tag: str
    metric: str
    expected: float
    tol: float
    better: str
    measured: float | None
    reason: str = ""

    @property
    def message(self) -> str:
        bound = self.expected - self.tol if self.better == "higher" else self.expected + self.tol
        want = (
            f"expected {self.expected:.6g} ± tol {self.tol:.6g} ({self.better} is better, bound {bound:.6g})"
        )
        if self.measured is None:
            return f"{self.config_tag}: {self.metric} {want}, but it is {self.reason}"
        side = "below" if self.better == "higher" else "above"
        extra = f"; {self.reason}" if self.reason else ""
        return f"{self.config_tag}: {self.metric} regressed: measured {self.measured:.6g} is {side} the bound — {want}{extra}"

    def __str__(self) -> str:
        return self.message


def default_better(metric: str) -> str:
    if metric in LOWER_IS_BETTER:
        return "lower"
    return "higher"


def load_expected(path: str | os.PathLike[str]) -> Expected:
    """The expectations file, validated; `{}` when it does not exist."""
    p = Path(path)
    if not p.is_file():
        return {}
    data = json.loads(p.read_text())
    if not isinstance(data, dict):
        raise ExpectedFormatError(f"{p}: top level must be an object of config tags")
    for tag, metrics in data.items():
        if not isinstance(metrics, dict):
            raise ExpectedFormatError(f"{p}: {tag} must map metric names to expectations")
        for metric, spec in metrics.items():
            if not isinstance(spec, dict) or "value" not in spec or "tol" not in spec:
                raise ExpectedFormatError(f"{p}: {tag}.{metric} needs 'value' and 'tol'")
            if spec.get("better", default_better(metric)) not in ("higher", "lower"):
                raise ExpectedFormatError(f"{p}: {tag}.{metric}.better must be 'higher' or 'lower'")
    return data


# ------------------------------------------------------------------ noise-aware timing


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
    return sum(d[: int(math.floor(u)) + 1]) / sum(d)


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
    alpha: float = 0.05,
) -> TimingComparison:
    """asv-style rule: a regression needs both a ratio of medians worse than `factor` AND a significant
    one-sided Mann-Whitney U test (p < alpha) in the bad direction."""
    import statistics

    mb, mc = statistics.median(baseline), statistics.median(candidate)
    ratio = mc / mb if mb else math.inf
    if better == "higher":
        p = mann_whitney_greater(baseline, candidate)
        worse = ratio < 1 / factor
    else:
        p = mann_whitney_greater(candidate, baseline)
        worse = ratio > factor
    return TimingComparison(ratio, p, bool(worse and p < alpha))


# ------------------------------------------------------------------ checking


def check(
    record: ResultRecord, expected: Mapping[str, Any], *, gate_timing: bool = False, alpha: float = 0.05
) -> list[GateFailure]:
    """Failures of `record` against the expectations for its config tag (none if the tag has none).
    An expected metric that is unavailable or unmeasured fails. Timing metrics are gated only with
    `gate_timing`; when both the expectation and the record carry samples the noise-aware rule applies."""
    specs = expected.get(record.config_tag, {})
    values = record.metric_values()
    failures = []
    for metric, spec in sorted(specs.items()):
        if metric in TIMING_METRICS and not gate_timing:
            continue
        value, tol = float(spec["value"]), float(spec["tol"])
        better = spec.get("better", default_better(metric))
        measured = values.get(metric, getattr(record, metric, None))
        if isinstance(measured, Unavailable):
            failures.append(
                GateFailure(
                    record.config_tag, metric, value, tol, better, None, f"unavailable ({measured.reason})"
                )
            )
            continue
        if measured is None or not math.isfinite(float(measured)):
            failures.append(
                GateFailure(record.config_tag, metric, value, tol, better, None, "not measured in this run")
            )
            continue
        measured = float(measured)
        bad = measured < value - tol if better == "higher" else measured > value + tol
        if not bad:
            continue
        reason = ""
        samples = record.timing.get(metric) if metric in TIMING_METRICS else None
        if samples and spec.get("samples"):
            cmp = compare_samples(
                spec["samples"],
                samples,
                better=better,
                factor=1.0 + tol / max(abs(value), 1e-12),
                alpha=alpha,
            )
            if not cmp.regressed:
                continue  # outside the band but within noise
            reason = f"ratio {cmp.ratio:.3f}, Mann-Whitney p = {cmp.p_value:.3g} < {alpha}"
        failures.append(GateFailure(record.config_tag, metric, value, tol, better, measured, reason))
    return failures


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file in the same folder + os.replace: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def update_expected(
    path: str | os.PathLike[str],
    records: Iterable[ResultRecord],
    tolerances: Mapping[str, float] | None = None,
) -> Expected:
    """Rewrite `path` with the records' current values (atomically, under a lock so xdist workers merge).
    Gated metrics are those in `tolerances` (default `DEFAULT_TOLERANCES`) plus any already expected;
    an existing entry keeps its tolerance and direction. Unavailable metrics are not written (an existing
    expectation stays, and will fail until the metric is available again). Call only on explicit request."""
    p = Path(path)
    tols = dict(DEFAULT_TOLERANCES if tolerances is None else tolerances)
    p.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16]
    with FileLock(str(Path(tempfile.gettempdir()) / f"dpcache-expected-{digest}.lock"), timeout=600):
        data = load_expected(p)
        for record in records:
            entry = data.setdefault(record.config_tag, {})
            values = record.metric_values()
            for metric in sorted(set(tols) | set(entry)):
                v = values.get(metric)
                if v is None or isinstance(v, Unavailable) or not math.isfinite(float(v)):
                    continue
                old = entry.get(metric, {})
                spec = {
                    "value": round(float(v), 6),
                    "tol": old.get("tol", tols.get(metric, 0.0)),
                    "better": old.get("better", default_better(metric)),
                }
                if metric in TIMING_METRICS and record.timing.get(metric):
                    spec["samples"] = [round(float(s), 6) for s in record.timing[metric]]
                entry[metric] = spec
        write_json_atomic(p, data)
    return data
