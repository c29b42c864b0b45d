"""The typed, versioned result record (identity, speed, timing, quality, schedule, references, provenance,
outcome): built by the runner, read by tracking, gates, reports and the CLI only through this type."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from harness.metrics import MetricResult, Unavailable
from harness.provenance import device_class, git_sha, library_versions, provenance
from harness.tags import config_tag, parse_tag, variant_tag

__all__ = [
    "ResultRecord",
    "config_tag",
    "git_sha",
    "library_versions",
    "parse_tag",
    "provenance",
    "variant_tag",
]

RECORD_VERSION = 2  # 1: the flat 33-field dict (read and migrated by `from_dict`)
MATCH_TOLERANCE = 0.05  # measured compute on the evaluation prompts within ±5 % of K: "matched"
Value = float | Unavailable | None  # a metric: a number, unavailable with its reason, or not measured
SPEED_METRICS = ("flops_speedup", "wall_speedup", "peak_mem")
QUALITY_METRICS = (
    "psnr",
    "ssim",
    "ms_ssim",
    "lpips",
    "adherence",
    "image_reward",
    "clip_score",
    "fid",
    "vbench",
)
METRIC_FIELDS = SPEED_METRICS + QUALITY_METRICS


class RecordFormatError(ValueError):
    """A serialised record that does not follow the schema (one line naming the field)."""


def compute_matched(
    measured_k: float | None, budget: int | None, tol: float = MATCH_TOLERANCE
) -> bool | None:
    """Whether compute measured on the evaluation prompts is within ±tol of K (None: nothing to match)."""
    if measured_k is None or budget is None or not math.isfinite(measured_k):
        return None
    return abs(measured_k - budget) <= tol * budget


def _value(v: Any) -> Value:
    if v is None or isinstance(v, Unavailable):
        return v
    if isinstance(v, MetricResult):
        return float(v.mean)
    if hasattr(v, "peak_bytes"):  # measure.MemoryResult
        return float(v.peak_bytes)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecordFormatError(f"a metric must be a number, got {type(v).__name__} {v!r}")
    return float(v)


def _num(v: Value) -> float | None:
    if v is None or isinstance(v, Unavailable):
        return None
    return float(v) if math.isfinite(float(v)) else None


@dataclass
class Identity:
    """What the record is a result of; (model, device class, config tag) is its gate key."""

    suite: str
    model: str
    scale: str
    method: str
    budget: int | None  # K requested (None: a method without a budget)
    num_steps: int  # T
    num_prompts: int
    config_tag: str = ""
    device_class: str = "cpu"
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Speed:
    """Compute and speed, all measured on the evaluation prompts."""

    flops_speedup: Value = None
    wall_speedup: Value = None
    peak_mem: Value = None  # bytes
    flops: int | None = None  # mean transformer FLOPs per sample
    measured_k: float | None = None  # full computations per sample, measured on the evaluation prompts
    matched: bool | None = None  # measured_k within ±5 % of K (None: K = T or no budget)
    cache_hits: list[int] = field(default_factory=list)  # per evaluation prompt
    compute_floor_k: float | None = None  # the least compute the method's knob reaches (calibration prompts)


@dataclass
class Timing:
    """Wall-clock samples (seconds, per timed repeat) behind `wall_speedup`; repeats 0 = not timed."""

    repeats: int = 0
    warmup: int = 0
    timer: str | None = None
    full_s: list[float] = field(default_factory=list)
    method_s: list[float] = field(default_factory=list)
    wall_speedup: list[float] = field(default_factory=list)
    pipeline_s: float | None = None
    pipeline_iqr_s: float | None = None
    transformer_s: float | None = None
    full_pipeline_s: float | None = None
    full_transformer_s: float | None = None
    mem_overhead_bytes: int | None = None


@dataclass
class Quality:
    """Against the full-step reference (mean over prompts) and prompt-level metrics; per-prompt values."""

    psnr: Value = None
    ssim: Value = None
    ms_ssim: Value = None
    lpips: Value = None
    adherence: Value = None
    image_reward: Value = None
    clip_score: Value = None
    fid: Value = None
    vbench: Value = None
    extra: dict[str, Value] = field(default_factory=dict)
    per_prompt: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass
class Schedule:
    key_steps: list[int] | None = None  # full-compute steps of a fixed schedule (None: decided online)
    full_steps: int | None = None
    # measured for every method on the evaluation prompts (harness.step_trace): the steps whose transformer
    # call ran the last block, one list per pass (prompt-major, then CFG branch); None: not traced
    computed_steps: list[list[int]] | None = None
    computed_branches: int | None = None  # passes per prompt (2: CFG run as two transformer calls)


@dataclass
class References:
    keys: list[str] = field(default_factory=list)  # one per evaluation prompt
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


@dataclass
class Provenance:
    git_sha: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    record_id: str | None = None  # stable id (harness.tracking.record_id): a replay never logs it twice
    mlflow_run_id: str | None = None  # the MLflow child run holding this record (None: not logged)
    mlflow_run_url: str | None = None  # its page on an http(s) tracking server


@dataclass
class Outcome:
    """`ok`, or `not_run` with the reason (unreachable budget, unsupported family); caveats (saturation)."""

    status: str = "ok"
    reason: str = ""
    caveats: list[str] = field(default_factory=list)


_PARTS = {"identity": Identity, "speed": Speed, "timing": Timing, "quality": Quality, "schedule": Schedule}
_PARTS |= {"references": References, "provenance": Provenance, "outcome": Outcome}


@dataclass
class ResultRecord:
    """One result per (model, scale, device class, method, K, T, number of prompts)."""

    identity: Identity
    speed: Speed = field(default_factory=Speed)
    timing: Timing = field(default_factory=Timing)
    quality: Quality = field(default_factory=Quality)
    schedule: Schedule = field(default_factory=Schedule)
    references: References = field(default_factory=References)
    provenance: Provenance = field(default_factory=Provenance)
    outcome: Outcome = field(default_factory=Outcome)

    def __post_init__(self) -> None:
        i = self.identity
        if not i.config_tag:
            i.config_tag = config_tag(i.method, i.budget, **i.knobs)
        for name in SPEED_METRICS:
            setattr(self.speed, name, _value(getattr(self.speed, name)))
        for name in QUALITY_METRICS:
            raw = getattr(self.quality, name)
            if isinstance(raw, MetricResult) and raw.per_item:
                self.quality.per_prompt.setdefault(name, [float(v) for v in raw.per_item])
            setattr(self.quality, name, _value(raw))
        self.quality.extra = {k: _value(v) for k, v in self.quality.extra.items()}
        if self.schedule.key_steps is not None:
            self.schedule.key_steps = [int(s) for s in self.schedule.key_steps]
            if self.schedule.full_steps is None:
                self.schedule.full_steps = len(self.schedule.key_steps)
        if self.speed.matched is None:
            self.speed.matched = compute_matched(self.speed.measured_k, self._k_to_match())
        if self.schedule.computed_steps is not None:
            self.schedule.computed_steps = [[int(s) for s in p] for p in self.schedule.computed_steps]

    def _k_to_match(self) -> int | None:
        i = self.identity
        return None if i.budget is None or i.method == "full" or i.budget >= i.num_steps else i.budget

    # -------------------------------------------------------------- reading
    @property
    def model(self) -> str:
        return self.identity.model

    @property
    def method(self) -> str:
        return self.identity.method

    @property
    def config_tag(self) -> str:
        return self.identity.config_tag

    @property
    def test_id(self) -> str:
        return f"{self.identity.model}-{self.identity.config_tag}"

    @property
    def ran(self) -> bool:
        return self.outcome.status == "ok"

    @property
    def unmatched(self) -> bool:
        """Measured compute on the evaluation prompts off K by more than 5 %: never ranked "at K"."""
        return self.speed.matched is False

    def metric_values(self) -> dict[str, Value]:
        """Every gateable metric by name: speed, quality, then quality extras."""
        out: dict[str, Value] = {n: getattr(self.speed, n) for n in SPEED_METRICS}
        out |= {n: getattr(self.quality, n) for n in QUALITY_METRICS}
        out |= self.quality.extra
        return out

    def metric(self, name: str) -> float | None:
        """A metric as a finite float, or None (unavailable or not measured); `measured_k` included."""
        if name == "measured_k":
            return self.speed.measured_k
        return _num(self.metric_values().get(name))

    def computed_fraction(self) -> list[float] | None:
        """Per step (0 … T-1), the fraction of evaluation passes (prompt × CFG branch) that ran the transformer:
        measured when traced, else 0/1 from a fixed schedule on the T-step grid, all 1 for `full`, else None
        (a method sampled with other than T steps, or a record from before tracing)."""
        t, sched = self.identity.num_steps, self.schedule
        if sched.computed_steps:
            from harness.step_trace import computed_fractions

            return computed_fractions(sched.computed_steps, t)
        if sched.key_steps is not None:
            keys = set(sched.key_steps)
            return [float(i in keys) for i in range(t)]
        if self.method == "full" and self.ran:
            return [1.0] * t
        return None

    def unavailable(self) -> dict[str, str]:
        return {k: v.reason for k, v in self.metric_values().items() if isinstance(v, Unavailable)}

    # -------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: each part as an object, metrics as numbers or null, `unavailable` with reasons."""
        out: dict[str, Any] = {"record_version": RECORD_VERSION}
        for name in _PARTS:
            part = asdict(getattr(self, name)) if name not in ("speed", "quality") else None
            if name == "speed":
                part = {f.name: getattr(self.speed, f.name) for f in fields(Speed)}
                part |= {n: _num(part[n]) for n in SPEED_METRICS}
            elif name == "quality":
                part = {f.name: getattr(self.quality, f.name) for f in fields(Quality)}
                part |= {n: _num(part[n]) for n in QUALITY_METRICS}
                part["extra"] = {k: _num(v) for k, v in self.quality.extra.items()}
                part["per_prompt"] = {k: list(v) for k, v in self.quality.per_prompt.items()}
            elif name == "schedule":  # traced steps only when traced: an untraced record reads as before
                part = {k: v for k, v in part.items() if v is not None or not k.startswith("computed_")}
            out[name] = part
        out["unavailable"] = self.unavailable()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRecord:
        """Inverse of `to_dict`; a version-1 (flat) record is migrated. RecordFormatError on bad input."""
        if not isinstance(data, dict):
            raise RecordFormatError(f"a record must be a JSON object, got {type(data).__name__}")
        version = data.get("record_version", 1)
        if version == 1 or "identity" not in data:
            from harness.records_v1 import from_v1

            return from_v1(data)
        if version != RECORD_VERSION:
            raise RecordFormatError(f"record_version {version} is not supported (this harness reads 1 and 2)")
        reasons = data.get("unavailable") or {}
        parts: dict[str, Any] = {}
        for name, kind in _PARTS.items():
            raw = data.get(name) or {}
            if not isinstance(raw, dict):
                raise RecordFormatError(f"record part {name!r} must be an object")
            known = {f.name for f in fields(kind)}
            kwargs = {k: v for k, v in raw.items() if k in known}
            if name in ("speed", "quality"):
                for m in SPEED_METRICS if name == "speed" else QUALITY_METRICS:
                    if m in reasons:
                        kwargs[m] = Unavailable(str(reasons[m]), m)
            if name == "quality":
                extra = dict(kwargs.get("extra") or {})
                extra |= {m: Unavailable(str(r), m) for m, r in reasons.items() if m not in METRIC_FIELDS}
                kwargs["extra"] = extra
            try:
                parts[name] = kind(**kwargs)
            except TypeError as e:
                raise RecordFormatError(f"record part {name!r}: {e}") from None
        return cls(**parts)

    @classmethod
    def create(
        cls,
        *,
        suite: str,
        model: str,
        scale: str,
        method: str,
        budget: int | None,
        num_steps: int,
        num_prompts: int | None = None,
        config_tag: str = "",
        device_class: str | None = None,
        knobs: dict[str, Any] | None = None,
        schedule: list[int] | None = None,
        prompts: list[str] | None = None,
        reference_keys: list[str] | None = None,
        cache_hits: list[int] | None = None,
        measured_k: float | None = None,
        flops: int | None = None,
        git_sha: str | None = None,
        versions: dict[str, str] | None = None,
        device: str | None = None,
        extra_metrics: dict[str, Any] | None = None,
        timing: Timing | None = None,
        **metrics: Any,
    ) -> ResultRecord:
        """A record from flat keyword arguments (tests, scripts): metrics by name (`psnr=`, `flops_speedup=`)."""
        unknown = set(metrics) - set(METRIC_FIELDS)
        if unknown:
            raise TypeError(f"unknown record fields: {', '.join(sorted(unknown))}")
        prompts = list(prompts or [])
        return cls(
            Identity(
                suite,
                model,
                scale,
                method,
                budget,
                num_steps,
                len(prompts) if num_prompts is None else num_prompts,
                config_tag,
                device_class or _device_class(device),
                dict(knobs or {}),
            ),
            Speed(
                **{m: metrics.get(m) for m in SPEED_METRICS},
                flops=flops,
                measured_k=measured_k,
                cache_hits=list(cache_hits or []),
            ),
            timing=timing or Timing(),
            quality=Quality(**{m: metrics.get(m) for m in QUALITY_METRICS}, extra=dict(extra_metrics or {})),
            schedule=Schedule(schedule),
            references=References(list(reference_keys or []), prompts),
            provenance=Provenance(git_sha, dict(versions or {}), device),
        )


def _device_class(device: str | None) -> str:
    return device_class(device) if device and device.startswith("cuda") else (device or "cpu").split(":")[0]
