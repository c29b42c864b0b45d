"""Report data helpers: read JSON-lines records, pick the latest per config, Pareto fronts, format metrics."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Record = dict[str, Any]
# PSNR is capped at 100 dB for outputs identical to the reference: such points are not plotted.
PSNR_IDENTICAL = 99.99
# method → preferred position in colour / column order (others follow alphabetically)
METHOD_ORDER = ("full", "dpcache", "fewer-steps")


def load_records(path: str | Path) -> dict[str, list[Record]]:
    """Records of a JSON-lines file grouped by invocation (file order kept; unreadable lines skipped)."""
    runs: dict[str, list[Record]] = defaultdict(list)
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("model") and rec.get("method"):
            runs[str(rec.get("invocation", "unknown"))].append(rec)
    return dict(runs)


def by_model(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Records grouped by model, first-seen order."""
    out: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        out[str(r["model"])].append(r)
    return dict(out)


def tag(r: Record) -> str:
    """The record's config tag (built from method and budget for records that lack one)."""
    return str(r.get("config_tag") or f"{r['method']}-K{r.get('budget')}")


def latest_per_config(records: Iterable[Record]) -> list[Record]:
    """One record per (model, config tag): the last one in file order (suites may record a config twice)."""
    last: dict[tuple[str, str], Record] = {}
    for r in records:
        key = (str(r["model"]), tag(r))
        last.pop(key, None)
        last[key] = r
    return sort_records(last.values())


def method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def sort_records(records: Iterable[Record]) -> list[Record]:
    """`full` first, then by budget (largest first), then method order."""

    def key(r: Record) -> tuple[int, int, tuple[int, str], str]:
        full = 0 if r["method"] == "full" else 1
        return (full, -int(r.get("budget") or 0), method_rank(str(r["method"])), tag(r))

    return sorted(records, key=key)


def methods_of(records: Iterable[Record]) -> list[str]:
    """Distinct methods in display order."""
    return sorted({str(r["method"]) for r in records}, key=method_rank)


def num(v: Any) -> float | None:
    """A finite float, or None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (higher x and higher y are better), ordered by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front[::-1]


def reason(r: Record, metric: str) -> str | None:
    """Why `metric` is missing from `r` (its `unavailable` entry), or None."""
    why = (r.get("unavailable") or {}).get(metric)
    return str(why) if why else None


def metric_value(r: Record, metric: str) -> float | None:
    v = r.get(metric)
    if v is None:
        v = (r.get("extra_metrics") or {}).get(metric)
    return num(v)


def fmt_metric(r: Record, metric: str) -> tuple[str, str | None]:
    """(display text, tooltip): `3.75×`, `37.30`, `0.9702`, or `n/a` with the reason as tooltip."""
    v = metric_value(r, metric)
    if v is None:
        why = reason(r, metric)
        return ("n/a", why) if why else ("–", "not measured")
    if metric.endswith("speedup"):
        return f"{v:.2f}×", None
    if metric == "psnr":
        return ("ref" if v >= PSNR_IDENTICAL else f"{v:.2f}"), (
            f"{v:.4f} dB" if v < PSNR_IDENTICAL else "identical"
        )
    if metric in ("ssim", "ms_ssim", "lpips"):
        return f"{v:.4f}", None
    if metric == "measured_k":
        return f"{v:.1f}", None
    return f"{v:.3g}" if abs(v) >= 1000 else f"{v:.2f}", None


def cache_hits(r: Record) -> int | None:
    hits = r.get("cache_hits")
    if isinstance(hits, list):
        vals = [h for h in hits if isinstance(h, int)]
        return sum(vals) if vals else None
    return hits if isinstance(hits, int) else None


def is_video(model: str) -> bool:
    """Whether the zoo knows `model` as a video model (its saved images are then the middle frames)."""
    try:
        from harness.zoo.registry import get_spec

        return get_spec(model).num_frames is not None
    except Exception:  # unknown model, zoo import problem: treat as images
        return False


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` through a temp file in the same folder + os.replace: readers never see a partial file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p
