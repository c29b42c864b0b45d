"""`dpcache-bench`: run the benchmark on a model (`run`), list `models` and `methods`, build an HTML
`report` from the JSON lines, open the MLflow `ui`, `replay` records into MLflow, plot the `history` of
every metric across runs, `compare` two runs side by side, and `seed-metrics` (fetch every quality metric's
weights once)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpcache import cli_args as ca
from harness.cli_checks import (
    BenchUsageError,
    check_model,
    check_run_args,
    configure_threads,
)
from harness.metrics import Unavailable

DEFAULT_JSON = "results.jsonl"
DEFAULT_REPORT = "reports/bench"


def _fmt(v: Any, spec: str = ".2f") -> str:
    """A number, "-" when absent, "n/a" when unavailable (the reason is in the record)."""
    if v is None:
        return "-"
    return "n/a" if isinstance(v, Unavailable) else format(v, spec)


def table(records: Sequence[Any], skipped: Sequence[Any] = ()) -> str:
    """The terminal table: method, K, FLOPs speedup, wall speedup, PSNR, SSIM, adherence, cache hits, and
    the compute measured on the evaluation prompts (UNMATCHED when off K by more than 5 %)."""
    head = f"{'model':<12} {'method':<16} {'K':>3} {'flops x':>8} {'wall x':>7} {'PSNR':>7} {'SSIM':>7} {'adher.':>7} {'measured K':>16} {'cache hits':>10}"
    lines = [head, "-" * len(head)]
    for r in records:
        i, sp, q = r.identity, r.speed, r.quality
        hits_s = str(sum(sp.cache_hits)) if sp.cache_hits else "-"
        k_s = "-" if sp.measured_k is None else f"{sp.measured_k:.2f}" + (" UNMATCHED" if r.unmatched else "")
        lines.append(
            f"{i.model:<12} {i.method:<16} {i.budget if i.budget is not None else '-':>3} "
            f"{_fmt(sp.flops_speedup):>8} {_fmt(sp.wall_speedup):>7} {_fmt(q.psnr):>7} {_fmt(q.ssim, '.4f'):>7} "
            f"{_fmt(q.adherence):>7} {k_s:>16} {hits_s:>10}"
        )
    for s in skipped:
        floor = f" (measured floor K={s.floor:.2f})" if getattr(s, "floor", None) is not None else ""
        lines.append(
            f"{s.model:<12} {s.method:<16} {s.budget if s.budget is not None else '-':>3}  did not run{floor}: {s.reason}"
        )
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.methods import resolve_methods
    from harness.zoo.registry import get_spec

    try:
        steps, budgets = check_run_args(args, get_spec(args.model))  # before anything heavy is imported
    except KeyError as e:
        raise BenchUsageError(str(e).strip("'\"")) from None
    spec = check_model(args.model, args.random_weights)
    try:
        methods = resolve_methods(args.methods if args.methods != "default" else None)
    except ValueError as e:
        raise BenchUsageError(str(e)) from None
    configure_threads(args.threads)
    if args.no_progress:
        from diffusers.utils import logging as dlog

        dlog.disable_progress_bar()
    from harness.runner import Skipped, cache_check, run_benchmark
    from harness.tracking import Tracker

    json_out = Path(args.json_out).resolve()
    tracker = Tracker(json_out, mlflow_uri=args.mlflow_uri, experiment=args.experiment)
    report_dir = Path(args.report).resolve() if args.report else None
    artifacts = (report_dir or json_out.parent / "bench-artifacts") / "runs" / tracker.invocation_id
    skipped: list[Skipped] = []
    pipe = None
    if args.random_weights:
        import importlib

        size = "medium" if spec.scale == "medium" else "tiny"
        pipe = importlib.import_module(spec.builder).build_pipeline(seed=0, trained=False, size=size)
        pipe = pipe.to(args.device)
    print(
        f"dpcache-bench: {spec.name} T={steps} methods={','.join(methods)} budgets={budgets} device={args.device} "
        f"prompts={args.num_prompts} repeats={args.repeats} (invocation {tracker.invocation_id})",
        flush=True,
    )
    try:
        records = run_benchmark(
            spec.name,
            methods,
            budgets,
            steps,
            args.num_prompts,
            repeats=args.repeats,
            num_calibration=args.calibration_prompts,
            tracker=tracker,
            cache_dir=_cache_dir(args.cache_dir),
            refs_dir=args.refs_dir,
            artifacts_dir=artifacts,
            skipped=skipped,
            progress=not args.no_progress,
            suite="bench",
            pipe=pipe,
            device=args.device,
        )
    finally:
        tracker.close()
    print()
    print(table(records, skipped))
    problems = [m for m in (cache_check(r) for r in records) if m]
    for p in problems:
        print(f"WARNING {p}")
    print()
    print(tracker.summary())
    if report_dir is not None:
        from harness.report import build_report

        try:
            index = build_report(
                json_out, report_dir, invocation=tracker.invocation_id, artifacts_root=artifacts.parent
            )
        except (OSError, ValueError) as e:  # the records are already in the JSON lines: say where
            raise BenchUsageError(
                f"--report {report_dir}: {ca.one_line(e)}; the {len(records)} records are in {json_out} "
                f"(rebuild with `dpcache-bench report --json-in {json_out}`)"
            ) from None
        print(f"dpcache: report {index}")
    if tracker.mlflow_uri and not tracker.not_logged:
        from harness.tracking import ui_command

        print(f"dpcache: browse MLflow: {ui_command(tracker.mlflow_uri)}")
    return 1 if problems else 0


def cmd_models(args: argparse.Namespace) -> int:
    from harness.zoo.registry import models_json

    rows = models_json(call_kwargs=args.json)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<22} {'family':<14} {'scale':<7} {'T':>3} {'size':>10}  available")
    for r in rows:
        size = f"{r['height']}x{r['width']}" + (f"x{r['num_frames']}" if r["num_frames"] else "")
        avail = "yes" if r["available"] else f"no: {r['reason']}"
        print(
            f"{r['name']:<22} {r['family']:<14} {r['scale']:<7} {r['num_inference_steps']:>3} {size:>10}  {avail}"
        )
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from harness.method_catalogue import rows as catalogue

    rows = catalogue()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'method':<16} {'families':<34} {'knob':<26} description")
    for r in rows:
        print(f"{r['name']:<16} {','.join(r['families']):<34} {r['knob']:<26} {r['description']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import build_report

    src = Path(args.json_in)
    if not src.is_file():
        raise BenchUsageError(f"no result records at {src} (run `dpcache-bench run --json-out {src}` first)")
    ca.check_output_dir("--out", args.out)
    ca.check_output_file("--benchmarks-md", args.benchmarks_md)
    if args.artifacts is not None and not Path(args.artifacts).is_dir():
        raise BenchUsageError(f"--artifacts {args.artifacts}: no such folder")
    try:
        page = build_report(src, Path(args.out), invocation=args.invocation, artifacts_root=args.artifacts)
    except ValueError as e:
        raise BenchUsageError(str(e)) from None
    index = Path(args.out) / "index.html"
    print(f"dpcache: report {page}" + (f" (all runs: {index})" if page != index else ""))
    if args.benchmarks_md:
        from harness.report.md import write_benchmarks_md

        command = f"dpcache-bench report --json-in {args.json_in} --benchmarks-md {args.benchmarks_md}"
        if args.invocation:
            command += f" --invocation {args.invocation}"
        try:
            md = write_benchmarks_md(src, args.benchmarks_md, command=command, invocation=args.invocation)
        except ValueError as e:
            raise BenchUsageError(str(e)) from None
        print(f"dpcache: benchmark table {md}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from harness.tracking import resolve_tracking_uri

    ca.int_in("--port", args.port, 1, 65535)
    uri = resolve_tracking_uri(args.mlflow_uri)
    if uri is None:
        raise BenchUsageError("MLflow tracking is off; give --mlflow-uri")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    if uri.startswith("sqlite:///"):
        cmd += [
            "--default-artifact-root",
            (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri(),
        ]
    print(f"dpcache: MLflow UI on http://127.0.0.1:{args.port} over {uri}", flush=True)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover


def cmd_replay(args: argparse.Namespace) -> int:
    from harness.tracking import resolve_tracking_uri
    from harness.tracking_replay import ReplayError, replay

    uri = resolve_tracking_uri(args.mlflow_uri)
    if uri is None:
        raise BenchUsageError("replay needs a tracking store: give --mlflow-uri")
    try:
        res = replay(Path(args.json_in), uri, experiment=args.experiment)
    except ReplayError as e:
        raise BenchUsageError(str(e)) from None
    print(f"dpcache: replayed {res.logged} record(s) into {uri}; {res.already} already there")
    return 0


class DefaultsOnce(argparse.ArgumentDefaultsHelpFormatter):
    """Adds `(default: …)` to an option's help unless the help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        return text if "default" in text.lower() else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    desc = " ".join(line.strip() for line in (__doc__ or "").splitlines() if line.strip())
    p = ca.OneLineParser(prog="dpcache-bench", description=desc)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = DefaultsOnce
    r = sub.add_parser(
        "run", help="Benchmark methods × budgets on one model and print the table.", formatter_class=fmt
    )
    r.add_argument("--model", required=True, help="a model name from `dpcache-bench models`")
    r.add_argument("--methods", default="default", help="all | a,b,... (default: full,fewer-steps,dpcache)")
    r.add_argument("--budgets", default="25,13,9", help="budgets K (full computations per sample)")
    r.add_argument("--steps", type=int, default=None, help="T (default: the model's)")
    r.add_argument("--num-prompts", type=int, default=8, help="evaluation prompts")
    r.add_argument(
        "--calibration-prompts", type=int, default=4, help="calibration prompts (dpcache, knob search)"
    )
    r.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed runs after warm-up (>= 5 for reported wall-clock; 0: none, wall_speedup unavailable)",
    )
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads, >= 1 (default 1 on CPU)")
    r.add_argument(
        "--device", default="cpu", help="where the pipeline and generators run: cpu, cuda (cuda:N), mps, auto"
    )
    r.add_argument("--mlflow-uri", default=None, help="tracking URI (None: sqlite:///./mlflow.db; 'off')")
    r.add_argument(
        "--experiment",
        default=None,
        help="MLflow experiment (None: $DPCACHE_MLFLOW_EXPERIMENT, else dpcache-<suite>-<scale>)",
    )
    r.add_argument("--json-out", default=DEFAULT_JSON, help="JSON-lines records file")
    r.add_argument("--report", default=None, metavar="DIR", help="also write the HTML report to DIR")
    r.add_argument(
        "--refs-dir", default=None, help="reference store (default .dpcache-cache/references/<model>)"
    )
    r.add_argument(
        "--cache-dir",
        default=None,
        help="Calibration / budget cache directory (default: $DPCACHE_CACHE_DIR, else ./.dpcache-cache).",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument(
        "--random-weights",
        action="store_true",
        help="build the model's architecture with random weights (smoke tests)",
    )
    r.set_defaults(func=cmd_run)
    m = sub.add_parser(
        "models", help="List every model the zoo knows and whether it is available here.", formatter_class=fmt
    )
    m.add_argument("--json", action="store_true", help="print JSON instead of the table")
    m.set_defaults(func=cmd_models)
    me = sub.add_parser(
        "methods", help="List every method, the families it supports and its knob.", formatter_class=fmt
    )
    me.add_argument("--json", action="store_true", help="print JSON instead of the table")
    me.set_defaults(func=cmd_methods)
    rep = sub.add_parser(
        "report",
        help="Write the static HTML report (OUT/<run>/index.html) from a JSON-lines file.",
        formatter_class=fmt,
    )
    rep.add_argument("--json-in", default=DEFAULT_JSON, help="JSON-lines records file")
    rep.add_argument(
        "--out", default=DEFAULT_REPORT, help="report folder: <run>/index.html per run, index.html"
    )
    rep.add_argument("--invocation", default=None, help="one run (default: every run in the file)")
    rep.add_argument(
        "--artifacts",
        default=None,
        help="folder of <run>/<model>/ images (default: OUT/runs, then bench-artifacts/runs)",
    )
    rep.add_argument(
        "--benchmarks-md",
        default=None,
        metavar="PATH",
        help="also rewrite PATH (e.g. reports/BENCHMARKS.md): latest tiny-scale table per model",
    )
    rep.set_defaults(func=cmd_report)
    u = sub.add_parser(
        "ui", help="Open the MLflow UI on 127.0.0.1 over a tracking store.", formatter_class=fmt
    )
    u.add_argument(
        "--mlflow-uri", default=None, help="tracking store (None: $MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    u.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1")
    u.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    u.set_defaults(func=cmd_ui)
    rp = sub.add_parser(
        "replay",
        help="Log the JSON-lines records that are not yet in MLflow (each record once, however often it runs).",
        formatter_class=fmt,
    )
    rp.add_argument("--json-in", default=DEFAULT_JSON, help="JSON-lines records file")
    rp.add_argument(
        "--mlflow-uri", default=None, help="tracking URI (None: $MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    rp.add_argument("--experiment", default=None, help="MLflow experiment (None: as `run` chose)")
    rp.set_defaults(func=cmd_replay)
    from harness.compare import add_parser as add_compare
    from harness.history import add_parser as add_history
    from harness.seed_metrics import add_parser as add_seed

    add_history(sub, fmt)
    add_compare(sub, fmt)
    add_seed(sub, fmt)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `dpcache-bench`: a refused request or a bad file is one line on stderr and exit 2,
    SIGINT one line and exit 130 (`dpcache.cli_args.run_main`)."""
    from harness.context import PromptOverlapError
    from harness.methods import BaselineImportError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed a one-line usage error
        return int(e.code or 0)
    return ca.run_main("dpcache-bench", args.func, args, errors=(PromptOverlapError, BaselineImportError))


def _cache_dir(option: str | None) -> Path:
    from harness.context import resolve_cache_dir

    return resolve_cache_dir(option)


if __name__ == "__main__":
    raise SystemExit(main())
