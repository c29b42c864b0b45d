"""`dpcache-bench history`: each gated metric over the last N runs of one (model, scale, device class, config)
from JSON lines and/or MLflow, with asv-style step detection naming the run where a step starts."""

from __future__ import annotations

import argparse
import html
import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HISTORY_METRICS = (
    "flops_speedup",
    "wall_speedup",
    "psnr",
    "ssim",
    "ms_ssim",
    "lpips",
    "image_reward",
    "clip_score",
    "fid",
    "vbench",
    "measured_k",
)
LOWER_IS_BETTER = {"lpips", "fid", "peak_mem"}


@dataclass
class Point:
    """One record of one run: its key, the run (invocation) it belongs to, its metrics, its MLflow run."""

    invocation: str
    key: tuple[str, str, str, str]  # (model, scale, device class, config tag)
    metrics: dict[str, float]
    run_id: str | None = None
    order: float = 0.0  # sort key (start time or position in the file)


@dataclass
class Step:
    """A change of level: the series is `before` up to `index - 1` and `after` from `index` on."""

    index: int
    invocation: str
    before: float
    after: float

    @property
    def rel(self) -> float:
        return (self.after - self.before) / abs(self.before) if self.before else math.inf

    def regression(self, metric: str) -> bool:
        return (self.after > self.before) == (metric in LOWER_IS_BETTER) and self.after != self.before


@dataclass
class Series:
    key: tuple[str, str, str, str]
    metric: str
    invocations: list[str]
    values: list[float]
    steps: list[Step] = field(default_factory=list)


def detect_steps(values: Sequence[float], penalty: float | None = None, min_rel: float = 0.002) -> list[int]:
    """Indices where a new level starts: the piecewise-constant fit minimising squared error + `penalty` per
    segment (optimal partitioning, like asv's `detect_steps`). Default penalty: 3·σ²·log(n) + a floor, σ from
    the median absolute first difference (robust to the steps themselves); level changes smaller than
    `min_rel` of the level are merged away."""
    x = [float(v) for v in values]
    n = len(x)
    if n < 3:
        return []
    diffs = sorted(abs(b - a) for a, b in itertools.pairwise(x))
    sigma = diffs[len(diffs) // 2] / (0.6745 * math.sqrt(2))
    scale = max(abs(v) for v in x) or 1.0
    sigma = max(sigma, 1e-3 * scale)
    pen = penalty if penalty is not None else 3.0 * sigma**2 * math.log(n) + 1e-12
    s1, s2 = [0.0], [0.0]
    for v in x:
        s1.append(s1[-1] + v)
        s2.append(s2[-1] + v * v)

    def cost(i: int, j: int) -> float:  # squared error of x[i:j] around its mean
        m = j - i
        return s2[j] - s2[i] - (s1[j] - s1[i]) ** 2 / m

    best, prev = [0.0] + [math.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            c = best[i] + cost(i, j) + pen
            if c < best[j]:
                best[j], prev[j] = c, i
    starts, j = [], n
    while j > 0:
        starts.append(prev[j])
        j = prev[j]
    starts = sorted(starts)[1:]  # drop the first segment's start (0)
    kept, bounds = [], [0, *starts, n]
    for a, b, c in zip(bounds, bounds[1:], bounds[2:], strict=False):
        before, after = sum(x[a:b]) / (b - a), sum(x[b:c]) / (c - b)
        if abs(after - before) > min_rel * max(abs(before), 1e-12):
            kept.append(b)
    return kept


def points_from_jsonl(paths: Sequence[Path]) -> list[Point]:
    from harness.record_files import read_jsonl

    out = []
    for path in paths:
        for n, (inv, rec) in enumerate(read_jsonl(path)):
            if not rec.ran:
                continue
            i = rec.identity
            vals = {m: rec.metric(m) for m in HISTORY_METRICS}
            out.append(
                Point(
                    inv,
                    (i.model, i.scale, i.device_class, i.config_tag),
                    {k: v for k, v in vals.items() if v is not None},
                    rec.provenance.mlflow_run_id,
                    float(n),
                )
            )
    return out


def points_from_mlflow(uri: str, prefix: str = "dpcache", max_runs: int = 20000) -> list[Point]:
    """Every finished child run of the experiments whose name starts with `prefix`."""
    from mlflow.tracking import MlflowClient

    names = {"eval_measured_K": "measured_k"}
    client = MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    if not exps:
        return []
    runs = client.search_runs(
        exps,
        filter_string="tags.`dpcache.role` = 'child' and attributes.status = 'FINISHED'",
        max_results=max_runs,
    )
    out = []
    for r in runs:
        p, t = r.data.params, r.data.tags
        if p.get("outcome", "ok") != "ok":
            continue
        metrics = {
            names.get(k, k): v for k, v in r.data.metrics.items() if names.get(k, k) in HISTORY_METRICS
        }
        key = (p.get("model", "?"), p.get("scale", "?"), p.get("device_class", "?"), p.get("config_tag", "?"))
        out.append(
            Point(
                t.get("dpcache.invocation", r.info.run_id),
                key,
                metrics,
                r.info.run_id,
                float(r.info.start_time or 0),
            )
        )
    return out


def load_points(json_in: Sequence[Path] = (), mlflow_uri: str | None = None) -> list[Point]:
    """Points of both sources; a record found in both (same invocation and key) is kept once."""
    pts = points_from_jsonl(json_in)
    if mlflow_uri:
        seen = {(p.invocation, p.key) for p in pts}
        pts += [p for p in points_from_mlflow(mlflow_uri) if (p.invocation, p.key) not in seen]
    return pts


def build_series(
    points: Sequence[Point], last: int = 30, metrics: Sequence[str] = HISTORY_METRICS
) -> list[Series]:
    """Per (key, metric): the value of each of the last `last` runs in run order (invocation ids start with
    their timestamp), with the detected steps."""
    by_key: dict[tuple[str, str, str, str], dict[str, Point]] = {}
    for p in points:
        by_key.setdefault(p.key, {})[p.invocation] = p
    out = []
    for key, runs in sorted(by_key.items()):
        invs = sorted(runs)[-last:]
        for m in metrics:
            pairs = [
                (inv, runs[inv].metrics[m])
                for inv in invs
                if m in runs[inv].metrics and math.isfinite(runs[inv].metrics[m])
            ]
            if len(pairs) < 2:
                continue
            s = Series(key, m, [a for a, _ in pairs], [b for _, b in pairs])
            bounds = [0, *detect_steps(s.values), len(s.values)]
            for a, b, c in zip(bounds, bounds[1:], bounds[2:], strict=False):
                before, after = sum(s.values[a:b]) / (b - a), sum(s.values[b:c]) / (c - b)
                s.steps.append(Step(b, s.invocations[b], before, after))
            out.append(s)
    return out


def describe(s: Series, step: Step) -> str:
    model, scale, dev, tag = s.key
    kind = "REGRESSION" if step.regression(s.metric) else "improvement"
    return (
        f"{model} {scale} {dev} {tag} {s.metric}: {kind} step starting at run {step.invocation} "
        f"({step.before:.4g} -> {step.after:.4g}, {step.rel:+.2%}, run {step.index + 1} of {len(s.values)})"
    )


def plot_series(s: Series, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.6))
    try:
        ax.plot(range(len(s.values)), s.values, marker="o", ms=3)
        for st in s.steps:
            ax.axvline(st.index - 0.5, color="#d62728" if st.regression(s.metric) else "#2ca02c", ls="--")
            ax.annotate(st.invocation, (st.index, st.after), fontsize=6, rotation=20)
        ax.set_xticks(range(len(s.values)), [i[:15] for i in s.invocations], rotation=60, fontsize=5)
        ax.set_title(f"{' '.join(s.key)}: {s.metric}", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path


def write_html(series: Sequence[Series], out: Path) -> Path:
    """out/index.html: one figure per series, the steps listed above them."""
    out.mkdir(parents=True, exist_ok=True)
    body = ["<h1>dpcache history</h1>"]
    steps = [describe(s, st) for s in series for st in s.steps]
    body.append(
        "<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in steps) + "</ul>"
        if steps
        else "<p>No step change.</p>"
    )
    for n, s in enumerate(series):
        png = plot_series(s, out / f"series-{n:04d}.png")
        body.append(
            f"<figure><img src='{png.name}' alt='{html.escape(' '.join(s.key) + ' ' + s.metric)}'></figure>"
        )
    index = out / "index.html"
    index.write_text(
        "<!doctype html><meta charset='utf-8'><title>dpcache history</title>" + "\n".join(body),
        encoding="utf-8",
    )
    return index


def cmd_history(args: argparse.Namespace) -> int:
    from harness.cli import BenchUsageError

    paths = [Path(p) for p in args.json_in or []]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BenchUsageError(f"--json-in {missing[0]}: no such file")
    if not paths and not args.mlflow_uri:
        raise BenchUsageError("history needs records: give --json-in FILE and/or --mlflow-uri URI")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pts = load_points(paths, args.mlflow_uri)
    except OSError as e:
        raise BenchUsageError(f"history: {e}") from None
    series = build_series(pts, last=args.last)
    if args.model:
        series = [s for s in series if s.key[0] == args.model]
    n_runs = len({p.invocation for p in pts})
    print(f"dpcache history: {len(series)} series over {n_runs} run(s) (last {args.last} per configuration)")
    failing = []
    for s in series:
        for st in s.steps:
            print(describe(s, st))
            if st.regression(s.metric) and st.index >= len(s.values) - args.recent:
                failing.append(st)
    if args.out:
        print(f"dpcache history: {write_html(series, Path(args.out))}")
    if failing and not args.no_fail:
        print(f"dpcache history: {len(failing)} regression step(s) start in the last {args.recent} run(s)")
        return 1
    return 0


def add_parser(sub: Any, fmt: Any) -> None:
    h = sub.add_parser(
        "history",
        help="Plot each gated metric over the last N runs of every configuration and name the run where a step change starts.",
        formatter_class=fmt,
    )
    h.add_argument("--json-in", action="append", default=None, help="JSON-lines records file (repeatable)")
    h.add_argument(
        "--mlflow-uri", default=None, help="also read the child runs of the dpcache* experiments there"
    )
    h.add_argument("--last", type=int, default=30, help="runs per configuration")
    h.add_argument("--model", default=None, help="only this model")
    h.add_argument("--out", default=None, metavar="DIR", help="write DIR/index.html with one plot per series")
    h.add_argument(
        "--recent", type=int, default=1, help="fail when a regression step starts in the last N runs"
    )
    h.add_argument("--no-fail", action="store_true", help="report regression steps without failing")
    h.set_defaults(func=cmd_history)
