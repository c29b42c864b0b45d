"""Reading version-1 result records (the flat dict written before the typed record) as `ResultRecord`s."""

from __future__ import annotations

from typing import Any

from harness.metrics import Unavailable
from harness.records import METRIC_FIELDS, RecordFormatError, ResultRecord, Timing

# v1 `timing` keys → `Timing` fields
_TIMING = {"full": "full_s", "method": "method_s"}


def _ints(v: Any) -> list[int]:
    """v1 stored cache hits and reference keys as one value or a list."""
    if v is None:
        return []
    return [int(x) for x in v if x is not None] if isinstance(v, list) else [int(v)]


def from_v1(data: dict[str, Any]) -> ResultRecord:
    """A v1 record: metrics at top level, `measured_k` among the extras, the calibration knob `measured_K`."""
    for key in ("model", "method", "num_steps"):
        if key not in data:
            raise RecordFormatError(f"version-1 record without {key!r}")
    reasons = data.get("unavailable") or {}
    extras = dict(data.get("extra_metrics") or {})
    measured_k = extras.pop("measured_k", None)
    extras = {k: Unavailable(str(reasons[k]), k) if k in reasons else v for k, v in extras.items()}
    extras |= {
        k: Unavailable(str(r), k) for k, r in reasons.items() if k not in METRIC_FIELDS and k not in extras
    }
    metrics = {m: data.get(m) for m in METRIC_FIELDS}
    metrics |= {
        m: Unavailable(str(reasons[m]), m) for m in METRIC_FIELDS if m in reasons and metrics[m] is None
    }
    knobs = dict(data.get("knobs") or {})
    if "measured_K" in knobs:
        knobs["calibration_measured_K"] = knobs.pop("measured_K")
    keys = data.get("reference_key")
    t = dict(data.get("timing") or {})
    timing = Timing(
        **{_TIMING.get(k, k): v for k, v in t.items() if _TIMING.get(k, k) in Timing.__dataclass_fields__}
    )
    prompts = [str(p) for p in data.get("prompts") or []]
    rec = ResultRecord.create(
        suite=str(data.get("suite", "unknown")),
        model=str(data["model"]),
        scale=str(data.get("scale", "unknown")),
        method=str(data["method"]),
        budget=data.get("budget"),
        num_steps=int(data["num_steps"]),
        num_prompts=len(prompts),
        config_tag=str(data.get("config_tag") or ""),
        knobs=knobs,
        schedule=data.get("schedule"),
        prompts=prompts,
        reference_keys=[keys] if isinstance(keys, str) else list(keys or []),
        cache_hits=_ints(data.get("cache_hits")),
        measured_k=float(measured_k) if isinstance(measured_k, (int, float)) else None,
        flops=data.get("flops"),
        git_sha=data.get("git_sha"),
        versions=dict(data.get("versions") or {}),
        device=data.get("device"),
        extra_metrics=extras,
        timing=timing,
        **metrics,
    )
    rec.quality.per_prompt = {k: list(v) for k, v in (data.get("per_prompt") or {}).items()}
    if data.get("full_steps") is not None:
        rec.schedule.full_steps = int(data["full_steps"])
    return rec
