"""Regression gates: expectations committed next to each suite (`expected.json`, schema 2), keyed by model
(so by scale) and, for wall-clock, by device class; validated on load; direction-aware per-metric tolerances;
noise-aware timing (asv-style); a model or device without a baseline is reported ungated, by name."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from dpcache.atomic_io import write_text_atomic
from harness.metrics import Unavailable
from harness.records import METRIC_FIELDS, ResultRecord
from harness.stats import ALPHA, compare_samples, mann_whitney_greater, min_p_value

__all__ = ["ALPHA", "GateFailure", "Verdict", "check", "evaluate", "load_expected", "update_expected"]
__all__ += ["SCHEMA", "ExpectedFormatError", "compare_samples", "mann_whitney_greater"]

SCHEMA = (
    2  # {"schema": 2, "models": {model: {"configs": {tag: specs}, "timing": {device class: {tag: specs}}}}}
)
HIGHER_IS_BETTER = {"psnr", "ssim", "ms_ssim", "flops_speedup", "wall_speedup", "adherence", "image_reward"}
HIGHER_IS_BETTER |= {"clip_score", "vbench"}
LOWER_IS_BETTER = {"lpips", "fid", "peak_mem", "flops"}
# Metrics measured by wall-clock: stored per device class, gated only with `gate_timing`, noise-aware.
TIMING_METRICS = {"wall_speedup"}
# Compared with the reference itself for the full-step run: never gated there (always 100 dB / 1.0).
SELF_COMPARING = {"psnr", "ssim", "ms_ssim", "lpips", "flops_speedup", "wall_speedup"}
KNOWN_METRICS = set(METRIC_FIELDS) | {"flops"}
REQUIRED = ("flops_speedup", "psnr", "ssim")  # every non-full config entry carries these
DEFAULT_TOLERANCES: dict[str, float] = {
    "flops_speedup": 0.01,
    "psnr": 0.5,
    "ssim": 0.01,
    "ms_ssim": 0.01,
    "lpips": 0.01,
    "adherence": 0.02,
    "wall_speedup": 0.25,
}
FLOPS_REL_TOL = 0.005  # the full run's absolute FLOPs: 0.5 % of the value
Specs = dict[str, dict[str, Any]]  # metric → {"value", "tol", "better"[, "samples"]}
Expected = dict[str, Any]


class ExpectedFormatError(ValueError):
    """expected.json does not follow schema 2 (the message names the file and every problem)."""


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


@dataclass
class Verdict:
    """A record against its baseline: failures, and why any part was not gated (missing baseline by name)."""

    failures: list[GateFailure] = field(default_factory=list)
    ungated: list[str] = field(default_factory=list)
    gated: bool = False


def default_better(metric: str) -> str:
    return "lower" if metric in LOWER_IS_BETTER else "higher"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_specs(where: str, tag: str, specs: Any, timing: bool, problems: list[str]) -> None:
    if not isinstance(specs, dict) or not specs:
        problems.append(f"{where}: must map metric names to expectations")
        return
    for metric, spec in specs.items():
        at = f"{where}.{metric}"
        if metric not in KNOWN_METRICS and not metric.startswith("adherence_"):
            problems.append(f"{at}: unknown metric")
        if (metric in TIMING_METRICS) != timing:
            problems.append(
                f"{at}: {'only wall-clock' if timing else 'wall-clock'} metrics belong under 'timing'"
            )
        if not isinstance(spec, dict):
            problems.append(f"{at}: must be an object with value, tol, better")
            continue
        for key in ("value", "tol"):
            if not _finite(spec.get(key)):
                problems.append(f"{at}.{key}: must be a finite number, got {spec.get(key)!r}")
        if _finite(spec.get("tol")) and spec["tol"] < 0:
            problems.append(f"{at}.tol: must be >= 0")
        if spec.get("better") not in ("higher", "lower"):
            problems.append(f"{at}.better: must be 'higher' or 'lower', got {spec.get('better')!r}")
        samples = spec.get("samples")
        if samples is not None and (not isinstance(samples, list) or not all(_finite(s) for s in samples)):
            problems.append(f"{at}.samples: must be a list of finite numbers")
        if set(spec) - {"value", "tol", "better", "samples"}:
            problems.append(f"{at}: unknown keys {sorted(set(spec) - {'value', 'tol', 'better', 'samples'})}")
    if not timing and not tag.startswith("full-"):
        missing = [m for m in REQUIRED if m not in specs]
        if missing:
            problems.append(f"{where}: missing required metric(s) {', '.join(missing)}")


def validate_expected(data: Any, path: str | os.PathLike[str]) -> Expected:
    """`data` if it follows schema 2, else one ExpectedFormatError listing every problem with the file."""
    problems: list[str] = []
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("models"), dict):
        raise ExpectedFormatError(
            f"{path}: not an expectations file of schema {SCHEMA} (need 'schema' and 'models')"
        )
    if set(data) - {"schema", "models"}:
        problems.append(f"unknown top-level keys {sorted(set(data) - {'schema', 'models'})}")
    for model, entry in data["models"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("configs"), dict):
            problems.append(f"models.{model}: needs 'configs'")
            continue
        if set(entry) - {"configs", "timing"}:
            problems.append(f"models.{model}: unknown keys {sorted(set(entry) - {'configs', 'timing'})}")
        for tag, specs in entry["configs"].items():
            _check_specs(f"models.{model}.configs.{tag}", tag, specs, False, problems)
        timing = entry.get("timing", {})
        if not isinstance(timing, dict):
            problems.append(f"models.{model}.timing: must map device classes to configs")
            continue
        for dev, tags in timing.items():
            if not isinstance(tags, dict):
                problems.append(f"models.{model}.timing.{dev}: must map config tags to expectations")
                continue
            for tag, specs in tags.items():
                _check_specs(f"models.{model}.timing.{dev}.{tag}", tag, specs, True, problems)
    if problems:
        raise ExpectedFormatError(f"{path}: invalid expectations: " + "; ".join(problems))
    return data


def load_expected(path: str | os.PathLike[str]) -> Expected:
    """The expectations file, validated against schema 2; an empty schema-2 document when it does not exist."""
    p = Path(path)
    if not p.is_file():
        return {"schema": SCHEMA, "models": {}}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ExpectedFormatError(f"{p}: not valid JSON ({e})") from None
    return validate_expected(data, p)


def _measured(record: ResultRecord, metric: str) -> Any:
    return record.speed.flops if metric == "flops" else record.metric_values().get(metric)


def check(
    record: ResultRecord,
    specs: Mapping[str, Mapping[str, Any]],
    *,
    gate_timing: bool = False,
    alpha: float = ALPHA,
) -> list[GateFailure]:
    """Failures of `record` against one config's `specs`. An expected metric that is unavailable or unmeasured
    fails. Timing metrics only with `gate_timing`; with samples on both sides the asv rule applies (ratio
    beyond the tolerance AND Mann-Whitney p < alpha), and samples too few to ever reach alpha fail."""
    tag, failures = record.config_tag, []
    for metric, spec in sorted(specs.items()):
        if metric in TIMING_METRICS and not gate_timing:
            continue
        value, tol = float(spec["value"]), float(spec["tol"])
        better = spec.get("better", default_better(metric))
        measured = _measured(record, metric)
        if isinstance(measured, Unavailable):
            failures.append(
                GateFailure(tag, metric, value, tol, better, None, f"unavailable ({measured.reason})")
            )
            continue
        if measured is None or not math.isfinite(float(measured)):
            failures.append(GateFailure(tag, metric, value, tol, better, None, "not measured in this run"))
            continue
        measured = float(measured)
        bad = measured < value - tol if better == "higher" else measured > value + tol
        if not bad:
            continue
        reason = ""
        samples = record.timing.wall_speedup if metric in TIMING_METRICS else None
        if samples and spec.get("samples"):
            base = spec["samples"]
            if min_p_value(len(base), len(samples)) >= alpha:
                reason = (
                    f"{len(base)} baseline and {len(samples)} new samples can never reach significance "
                    f"{alpha}: rerun with more --repeats and refresh the baseline"
                )
            else:
                cmp = compare_samples(
                    base, samples, better=better, factor=1.0 + tol / max(abs(value), 1e-12), alpha=alpha
                )
                if not cmp.regressed:
                    continue  # outside the band but within noise
                reason = f"ratio {cmp.ratio:.3f}, Mann-Whitney p = {cmp.p_value:.3g} < {alpha}"
        failures.append(GateFailure(tag, metric, value, tol, better, measured, reason))
    return failures


def evaluate(
    record: ResultRecord,
    path: str | os.PathLike[str],
    *,
    metrics: Iterable[str] | None = None,
    gate_timing: bool = False,
    alpha: float = ALPHA,
) -> Verdict:
    """The record against the baseline of its model (and, for wall-clock, its device class) in `path`."""
    data, i = load_expected(path), record.identity
    keep = set(metrics) if metrics is not None else None
    verdict = Verdict()
    entry = data["models"].get(i.model)
    if entry is None:
        verdict.ungated.append(
            f"no baseline for model {i.model} in {path} (bootstrap it with --update-expected)"
        )
        return verdict
    specs = entry["configs"].get(i.config_tag)
    if specs is None:
        verdict.ungated.append(f"no expectation for {i.config_tag} in the {i.model} baseline of {path}")
    else:
        specs = {m: s for m, s in specs.items() if keep is None or m in keep}
        verdict.failures += check(record, specs, alpha=alpha)
        verdict.gated = True
    wants_timing = gate_timing and (keep is None or keep & TIMING_METRICS)
    if wants_timing and specs is not None:
        timed = entry.get("timing", {}).get(i.device_class)
        tspecs = (timed or {}).get(i.config_tag)
        if tspecs is None:
            verdict.ungated.append(
                f"no wall-clock baseline for {i.config_tag} on device class {i.device_class} "
                f"in the {i.model} baseline of {path}"
            )
        else:
            verdict.failures += check(record, tspecs, gate_timing=True, alpha=alpha)
    return verdict


def missing_required(record: ResultRecord, names: Iterable[str]) -> list[str]:
    """One line per required metric the record does not have (`all`: every metric the run attempted), with
    the reason it is unavailable — at full scale the nightly requires them instead of recording n/a."""
    names = list(names)
    unavailable = record.unavailable()
    values = record.metric_values()
    if "all" in names:
        names = [n for n in names if n != "all"] + sorted(unavailable)
    out = []
    for n in dict.fromkeys(names):
        if n in unavailable:
            out.append(f"{n}: unavailable ({unavailable[n]})")
        elif values.get(n) is None:
            out.append(f"{n}: not measured for {record.identity.config_tag}")
    return out


def expected_configs(path: str | os.PathLike[str], model: str) -> dict[str, Specs] | None:
    """The committed config entries of `model` (None: the file has no baseline for it)."""
    entry = load_expected(path)["models"].get(model)
    return None if entry is None else entry["configs"]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (indent 2, sorted keys) with `dpcache.atomic_io`: readers never see a partial file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _spec(old: Mapping[str, Any], metric: str, v: float, tols: Mapping[str, float]) -> dict[str, Any]:
    default_tol = abs(v) * FLOPS_REL_TOL if metric == "flops" else tols.get(metric, 0.0)
    return {
        "value": round(v, 6),
        "tol": old.get("tol", default_tol),
        "better": old.get("better", default_better(metric)),
    }


def update_expected(
    path: str | os.PathLike[str],
    records: Iterable[ResultRecord],
    tolerances: Mapping[str, float] | None = None,
) -> Expected:
    """Rewrite `path` with the records' current values under their model (wall-clock under the model's
    device class), atomically and under a lock (xdist workers merge). Gated metrics are those in `tolerances`
    (default `DEFAULT_TOLERANCES`) plus any already expected; an existing entry keeps its tolerance and
    direction. The full-step run is never gated on metrics that compare the reference with itself; its
    absolute FLOPs are. Unavailable metrics are not written. Call only on explicit request."""
    p = Path(path)
    tols = dict(DEFAULT_TOLERANCES if tolerances is None else tolerances)
    p.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16]
    with FileLock(str(Path(tempfile.gettempdir()) / f"dpcache-expected-{digest}.lock"), timeout=600):
        data = load_expected(p)
        for record in records:
            if not record.ran:
                continue
            i = record.identity
            model = data["models"].setdefault(i.model, {"configs": {}})
            entry = model["configs"].setdefault(i.config_tag, {})
            full = i.method == "full"
            wanted = (set(tols) | set(entry) | ({"flops"} if full else set())) - TIMING_METRICS
            for metric in sorted(wanted - (SELF_COMPARING if full else set())):
                v = _measured(record, metric)
                if _finite(v):
                    entry[metric] = _spec(entry.get(metric, {}), metric, float(v), tols)
            for metric in SELF_COMPARING & set(entry) if full else ():
                del entry[metric]
            if not entry:
                del model["configs"][i.config_tag]
            wall = record.speed.wall_speedup
            if "wall_speedup" in tols and not full and record.timing.repeats and _finite(wall):
                dev = model.setdefault("timing", {}).setdefault(i.device_class, {})
                old = dev.get(i.config_tag, {}).get("wall_speedup", {})
                spec = _spec(old, "wall_speedup", float(wall), tols)
                spec["samples"] = [round(float(s), 6) for s in record.timing.wall_speedup]
                dev[i.config_tag] = {"wall_speedup": spec}
        write_json_atomic(p, validate_expected(data, p))
    return data
