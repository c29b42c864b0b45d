"""Report data helpers: read JSON-lines records, pick the latest per config, Pareto fronts, format metrics."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.record_files import read_jsonl
from harness.records import ResultRecord

Record = dict[str, Any]  # `view()` of a ResultRecord
# PSNR is capped at 100 dB for outputs identical to the reference: such points are not plotted.
PSNR_IDENTICAL = 99.99
# method → preferred position in colour / column order (others follow alphabetically)
METHOD_ORDER = ("full", "dpcache", "fewer-steps")


def view(invocation: str, rec: ResultRecord) -> Record:
    """The report's flat, read-only view of a typed record (what the tables, plots and pages show)."""
    i, sp, q = rec.identity, rec.speed, rec.quality
    out: Record = {
        "invocation": invocation,
        "suite": i.suite,
        "model": i.model,
        "scale": i.scale,
        "method": i.method,
        "budget": i.budget,
        "num_steps": i.num_steps,
        "num_prompts": i.num_prompts,
        "config_tag": i.config_tag,
        "device_class": i.device_class,
        "schedule": rec.schedule.key_steps,
        "computed": rec.computed_fraction(),  # per step: fraction of passes (prompt × branch) computed
        "computed_passes": len(rec.schedule.computed_steps or []) or None,  # None: not traced
        "prompts": list(rec.references.prompts),
        "per_prompt": dict(q.per_prompt),
        "unavailable": rec.unavailable(),
        "timing": {"repeats": rec.timing.repeats, "warmup": rec.timing.warmup},
        "git_sha": rec.provenance.git_sha,
        "versions": dict(rec.provenance.versions),
        "device": rec.provenance.device,
        "measured_k": sp.measured_k,
        "matched": sp.matched,
        "cache_hits": sum(sp.cache_hits) if sp.cache_hits else None,
        "status": rec.outcome.status,
        "reason": rec.outcome.reason,
        "floor": sp.compute_floor_k,
        "caveats": list(rec.outcome.caveats),
    }
    out |= {name: rec.metric(name) for name in rec.metric_values()}
    return out


def load_records(path: str | Path) -> dict[str, list[Record]]:
    """Records of a JSON-lines file (read through `ResultRecord`) grouped by invocation, file order kept;
    an invalid line is reported with its file and line number (`RecordFileWarning`), not dropped silently."""
    runs: dict[str, list[Record]] = defaultdict(list)
    for invocation, rec in read_jsonl(path):
        runs[invocation].append(view(invocation, rec))
    return dict(runs)


def shade(colour: str, fraction: float, grey: str = "#e3e3e3") -> str:
    """`grey` blended towards `colour` by `fraction` (0: grey, 1: the colour), as `#rrggbb`."""
    f = min(max(float(fraction), 0.0), 1.0)
    a, b = (tuple(int(c.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4)) for c in (grey, colour))
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b))


def computed_summary(r: Record) -> str:
    """How much of the T-step axis a record computed: `10/20` (a fixed schedule or an all-or-nothing trace),
    `mean 9.5/20 over 6 passes` (a method that decides per prompt)."""
    fr, t = r.get("computed") or [], len(r.get("computed") or [])
    if all(f in (0.0, 1.0) for f in fr):
        return f"{int(sum(fr))}/{t}"
    return f"mean {sum(fr):.1f}/{t} over {r.get('computed_passes')} passes"


def prompt_spread(r: Record, metric: str = "psnr") -> tuple[float, float] | None:
    """(min, max) of a metric over the evaluation prompts (`per_prompt`), or None with fewer than two
    values; per-prompt PSNRs at the 100 dB cap (identical images) are left out."""
    vals = [v for x in (r.get("per_prompt") or {}).get(metric) or [] if (v := num(x)) is not None]
    if metric == "psnr":
        vals = [v for v in vals if v < PSNR_IDENTICAL]
    return (min(vals), max(vals)) if len(vals) > 1 else None


def by_model(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Records grouped by model, first-seen order."""
    out: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        out[str(r["model"])].append(r)
    return dict(out)


def tag(r: Record) -> str:
    """The record's config tag (built from method and budget for records that lack one)."""
    return str(r.get("config_tag") or f"{r['method']}-K{r.get('budget')}")


def ran(r: Record) -> bool:
    return r.get("status", "ok") == "ok"


def not_run(records: Iterable[Record]) -> list[Record]:
    """Configurations asked for that did not run (the last word per config: a later run may have run it)."""
    last: dict[tuple[str, str], Record] = {}
    for r in records:
        last[(str(r["model"]), tag(r))] = r
    return [r for r in sort_records(last.values()) if not ran(r)]


def latest_per_config(records: Iterable[Record]) -> list[Record]:
    """One record per (model, config tag) that ran: the last one in file order (suites may record a config
    twice)."""
    last: dict[tuple[str, str], Record] = {}
    for r in records:
        if not ran(r):
            continue
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
    return hits if isinstance(hits, int) else None


def unmatched(r: Record) -> bool:
    """Measured compute on the evaluation prompts off K by more than 5 %: never ranked "at K"."""
    return r.get("matched") is False


def at_k(points: Sequence[tuple[float, float]], k: float) -> tuple[float | None, str]:
    """(value at exactly K, how): linear in measured K between the two measured settings that bracket K; a
    setting measured at K itself is used as is; None with the reason when no pair brackets K."""
    exact = [v for m, v in points if abs(m - k) <= 1e-9]
    if exact:
        return exact[0], "measured at K"
    below = [(m, v) for m, v in points if m < k]
    above = [(m, v) for m, v in points if m > k]
    if not below or not above:
        side = "below" if not below else "above"
        return None, f"no measured setting {side} K={k:g} to bracket it"
    (m0, v0), (m1, v1) = max(below), min(above)
    return v0 + (v1 - v0) * (k - m0) / (m1 - m0), f"interpolated between measured K={m0:.2f} and K={m1:.2f}"


def raw_point(raw: Record | None, metric: str) -> str:
    """The measured point beside a ranking at exactly K: value, its measured K, UNMATCHED when off K."""
    if raw is None:
        return "none at this K"
    mk, v = metric_value(raw, "measured_k"), metric_value(raw, metric)
    text = f"{'n/a' if v is None else f'{v:.2f}'} at measured K={'?' if mk is None else f'{mk:.2f}'}"
    return text + (" UNMATCHED" if unmatched(raw) else "")


def leaders(records: Sequence[Record], metric: str = "psnr") -> dict[int, list[dict[str, Any]]]:
    """Per requested K: each method's `metric` at exactly K (interpolated in measured K) beside its raw point,
    best first; a method's raw point off K (unmatched) is shown but never ranked as "at K"."""
    out: dict[int, list[dict[str, Any]]] = {}
    recs = [r for r in records if r["method"] != "full" and ran(r)]
    for k in sorted({int(r["budget"]) for r in recs if r.get("budget") is not None}, reverse=True):
        rows = []
        for method in methods_of(recs):
            mine = [r for r in recs if r["method"] == method]
            pts = [
                (float(r["measured_k"]), v)
                for r in mine
                if r.get("measured_k") is not None
                and (v := metric_value(r, metric)) is not None
                and v < PSNR_IDENTICAL
            ]
            value, how = at_k(pts, k)
            raw = next((r for r in mine if r.get("budget") == k), None)
            rows.append({"method": method, "value": value, "how": how, "raw": raw})
        rows.sort(key=lambda row: (row["value"] is None, -(row["value"] or 0.0)))
        out[k] = rows
    return out


def is_video(model: str) -> bool:
    """Whether the zoo knows `model` as a video model (its saved images are then the middle frames)."""
    try:
        from harness.zoo.registry import get_spec

        return get_spec(model).num_frames is not None
    except Exception:  # unknown model, zoo import problem: treat as images
        return False


COST_CURVE = "cost_curve.json"  # beside cost_tensor.png: DPCache's optimal path cost per K, per solver


def write_cost_curve(cost: Any, path: str | Path, opts: dict[str, Any]) -> Path:
    """`path` (JSON): the optimal path cost against K for every planner solver, from a cost tensor (or its
    array) and the planning options (`first_full_steps` …): what the heatmap's right panel draws, as data the
    report redraws with the chosen K marked."""
    from dpcache.atomic_io import write_text_atomic
    from dpcache.planner import SOLVERS, plan_all_budgets

    curves = {}
    for solver in SOLVERS:
        curve = plan_all_budgets(cost, **{**opts, "solver": solver})
        curves[solver] = [[int(k), float(s.path_cost)] for k, s in sorted(curve.items())]
    data = {"options": {k: v for k, v in opts.items() if isinstance(v, (int, float, str))}, "solvers": curves}
    return write_text_atomic(Path(path), json.dumps(data, indent=1) + "\n")


def read_cost_curve(path: Path) -> dict[str, list[tuple[int, float]]] | None:
    """{solver: [(K, path cost), …]} from `write_cost_curve`'s file, or None (absent or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(s): [(int(k), float(c)) for k, c in pts] for s, pts in data["solvers"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
