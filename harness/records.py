"""The result record: one per (suite, model, method, budget), serialised the same way for JSON lines,
MLflow and the gates; unavailable metrics become `null` plus an `unavailable: {metric: reason}` map."""

from __future__ import annotations

import json
import math
import platform
import re
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.metrics import MetricResult, Unavailable

RECORD_VERSION = 1
# Fields that hold a metric value: float, Unavailable (→ null + reason) or None (not measured).
METRIC_FIELDS = (
    "flops_speedup",
    "wall_speedup",
    "psnr",
    "ssim",
    "ms_ssim",
    "lpips",
    "adherence",
    "image_reward",
    "clip_score",
    "fid",
    "vbench",
    "peak_mem",
)
MetricValue = float | Unavailable | MetricResult | None


def _fmt_knob(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (list, tuple)):
        return "_".join(_fmt_knob(v) for v in value)
    return str(value)


def config_tag(method: str, budget: int | None, **knobs: Any) -> str:
    """Deterministic tag: method, `K<budget>`, then knobs sorted by name as `<name><value>`
    (e.g. `config_tag("dpcache", 13, M=3, O=2) == "dpcache-K13-M3-O2"`); None-valued knobs are left out."""
    parts = [method] + ([f"K{int(budget)}"] if budget is not None else [])
    parts += [f"{k}{_fmt_knob(v)}" for k, v in sorted(knobs.items()) if v is not None]
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))


@dataclass
class ResultRecord:
    """One benchmark result. Metric fields accept a float, a `MetricResult` (its per-item values go into
    `per_prompt`), an `Unavailable` (kept with its reason) or None (not measured)."""

    suite: str
    model: str
    scale: str
    method: str
    budget: int | None
    num_steps: int
    config_tag: str = ""
    schedule: list[int] | None = None
    full_steps: int | None = None
    flops_speedup: MetricValue = None
    wall_speedup: MetricValue = None
    psnr: MetricValue = None
    ssim: MetricValue = None
    ms_ssim: MetricValue = None
    lpips: MetricValue = None
    adherence: MetricValue = None
    image_reward: MetricValue = None
    clip_score: MetricValue = None
    fid: MetricValue = None
    vbench: MetricValue = None
    peak_mem: MetricValue = None
    reference_key: str | list[str] | None = None
    per_prompt: dict[str, list[float | None]] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)
    cache_hits: int | list[int] | None = None
    flops: int | None = None
    timing: dict[str, Any] = field(default_factory=dict)  # e.g. {"full": [s...], "method": [s...]}
    knobs: dict[str, Any] = field(default_factory=dict)
    extra_metrics: dict[str, MetricValue] = field(default_factory=dict)
    git_sha: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.config_tag:
            self.config_tag = config_tag(self.method, self.budget, **self.knobs)
        if self.schedule is not None:
            self.schedule = [int(s) for s in self.schedule]
            if self.full_steps is None:
                self.full_steps = len(self.schedule)
        for name in METRIC_FIELDS:
            setattr(self, name, self._absorb(name, getattr(self, name)))
        self.extra_metrics = {k: self._absorb(k, v) for k, v in self.extra_metrics.items()}

    def _absorb(self, name: str, value: Any) -> float | Unavailable | None:
        if isinstance(value, MetricResult):
            if value.per_item:
                self.per_prompt.setdefault(name, [float(v) for v in value.per_item])
            return float(value.mean)
        if value is None or isinstance(value, Unavailable):
            return value
        if hasattr(value, "overhead_bytes"):  # measure.MemoryResult
            return float(value.peak_bytes)
        return float(value)

    def metric_values(self) -> dict[str, float | Unavailable | None]:
        """Every metric by name (standard fields, then extras)."""
        out: dict[str, float | Unavailable | None] = {n: getattr(self, n) for n in METRIC_FIELDS}
        out.update(self.extra_metrics)
        return out

    def unavailable(self) -> dict[str, str]:
        return {k: v.reason for k, v in self.metric_values().items() if isinstance(v, Unavailable)}

    @property
    def test_id(self) -> str:
        return f"{self.model}-{self.config_tag}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: metrics as numbers or null (non-finite → null), `unavailable` with reasons."""
        out: dict[str, Any] = {"record_version": RECORD_VERSION}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "extra_metrics":
                v = {k: _num(x) for k, x in v.items()}
            elif f.name in METRIC_FIELDS:
                v = _num(v)
            out[f.name] = v
        out["unavailable"] = self.unavailable()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRecord:
        """Inverse of `to_dict` (null metrics named in `unavailable` come back as `Unavailable`)."""
        data = dict(data)
        reasons = data.pop("unavailable", {}) or {}
        data.pop("record_version", None)
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for m in METRIC_FIELDS:
            if m in reasons:
                kwargs[m] = Unavailable(reasons[m], m)
        extras = dict(kwargs.get("extra_metrics") or {})
        for m, r in reasons.items():
            if m not in METRIC_FIELDS:
                extras[m] = Unavailable(r, m)
        kwargs["extra_metrics"] = extras
        return cls(**kwargs)


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, Unavailable):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def git_sha(cwd: str | Path | None = None) -> str | None:
    """HEAD's commit, with `-dirty` when the tree has changes; None outside git or before the first commit."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "-uno"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions(
    packages: tuple[str, ...] = (
        "dpcache",
        "torch",
        "diffusers",
        "transformers",
        "torchmetrics",
        "mlflow",
        "numpy",
    ),
) -> dict[str, str]:
    """Installed versions of the libraries that change the numbers (absent ones are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def provenance(device: str | None = None, cwd: str | Path | None = None) -> dict[str, Any]:
    """`git_sha`, `versions`, `device` for a record (`ResultRecord(..., **provenance(device))`)."""
    return {"git_sha": git_sha(cwd), "versions": library_versions(), "device": device or "cpu"}
