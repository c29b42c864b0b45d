"""The `dpcache` command line: plan schedules, convert released tensors, inspect cost tensor files.

Pipeline commands (`calibrate`, `generate`) are registered from ``dpcache.cli_pipeline``; a new
subcommand module adds itself in `build_parser` with one `register_*(sub)` call. Every subcommand sets
``func(args) -> int`` and validates its arguments with ``dpcache.cli_args`` before any work; any
DPCacheError or OSError becomes one line on stderr and exit code 2, SIGINT one line and exit 130.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dpcache import cli_args as ca
from dpcache.cost_tensor import CostTensor
from dpcache.errors import DPCacheError
from dpcache.planner import SOLVERS, Schedule, default_max_jump, mandatory_steps, plan, plan_all_budgets

KEY_CHAR, SKIP_CHAR = "█", "·"


def schedule_strip(schedule: Schedule) -> str:
    """One character per step: KEY_CHAR for a computed step, SKIP_CHAR for a predicted one."""
    keys = set(schedule.key_steps)
    return "".join(KEY_CHAR if s in keys else SKIP_CHAR for s in range(schedule.num_steps))


def parse_budgets(text: str) -> list[int] | None:
    """``"13"``, ``"9,13"``, ``"5-25"`` → sorted budgets; ``"all"`` → None (every feasible budget)."""
    if text.strip().lower() == "all":
        return None
    budgets: set[int] = set()
    try:
        for part in (x.strip() for x in text.split(",")):
            span = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if span and int(span[2]) - int(span[1]) > 100_000:
                raise DPCacheError(f"--budget range {part!r} is too wide")
            budgets.update(range(int(span[1]), int(span[2]) + 1) if span else [int(part)])
    except ValueError:
        raise DPCacheError(f"--budget must be K, K1,K2,…, A-B or 'all'; got {text!r}") from None
    if not budgets:
        raise DPCacheError(f"--budget selects no budget: {text!r}")
    return sorted(budgets)


def load_cost_tensor(path: str, args: argparse.Namespace) -> CostTensor:
    """A .safetensors cost tensor, or a bare .npy whose metadata comes from the flags."""
    p = Path(path)
    if p.suffix.lower() == ".npy":
        from dpcache.convert import load_npy

        arr = load_npy(p)
        steps = getattr(args, "steps", None)
        if steps is not None and steps != arr.shape[0]:
            raise DPCacheError(f"{p} has T={arr.shape[0]} (shape {arr.shape}) but --steps says {steps}")
        first = getattr(args, "first_full", None)
        last = getattr(args, "last_full", None)
        return CostTensor.from_array(
            arr,
            first_full_steps=3 if first is None else first,
            last_full_steps=0 if last is None else last,
            source=f"npy:{p.name}",
        )
    tensor = CostTensor.load(p)
    if getattr(args, "steps", None) is not None:
        tensor.check_compatible(num_steps=args.steps)
    return tensor


def _check_planning_flags(args: argparse.Namespace) -> None:
    ca.check_steps(getattr(args, "steps", None))
    ca.int_in("--first-full", getattr(args, "first_full", None), 0, ca.MAX_STEPS)
    ca.int_in("--last-full", getattr(args, "last_full", None), 0, ca.MAX_STEPS)
    ca.int_in("--max-jump", getattr(args, "max_jump", None), 1, ca.MAX_STEPS)


def _planning_options(tensor: CostTensor, args: argparse.Namespace) -> dict:
    return {
        "first_full_steps": tensor.meta.first_full_steps if args.first_full is None else args.first_full,
        "last_full_steps": tensor.meta.last_full_steps if args.last_full is None else args.last_full,
        "max_jump": args.max_jump,
        "solver": args.solver,
    }


def cmd_plan(args: argparse.Namespace) -> int:
    _check_planning_flags(args)
    budgets = parse_budgets(args.budget)
    tensor = load_cost_tensor(args.cost, args)
    opts = _planning_options(tensor, args)
    if budgets is not None and len(budgets) == 1:
        schedules = {budgets[0]: plan(tensor, budgets[0], **opts)}
    else:
        schedules = plan_all_budgets(tensor, budgets=budgets, **opts)
    if args.json:
        dicts = [s.to_dict() for s in schedules.values()]
        print(json.dumps(dicts[0] if len(dicts) == 1 and budgets is not None else dicts))
        return 0
    jump = default_max_jump(tensor.num_steps) if args.max_jump is None else args.max_jump
    print(
        f"{args.cost}: T={tensor.num_steps} solver={args.solver} first_full={opts['first_full_steps']} "
        f"last_full={opts['last_full_steps']} max_jump={jump}"
    )
    print(f"{'K':>3}  {'path cost':>12}  schedule ({KEY_CHAR} computed, {SKIP_CHAR} predicted)  key steps")
    for k, sched in schedules.items():
        steps = " ".join(str(s) for s in sched.key_steps)
        print(f"{k:>3}  {sched.path_cost:>12.6g}  {schedule_strip(sched)}  {steps}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from dpcache.convert import convert

    out = Path(args.out)
    if out.suffix.lower() != ".safetensors":
        raise DPCacheError(f"--out must end in .safetensors, got {out}")
    _check_planning_flags(args)
    ca.int_in("--order", args.order, 0, ca.MAX_ORDER)
    ca.finite("--sentinel-alpha", args.sentinel_alpha, 0.0)
    ca.check_input_file("SRC", args.src)
    ca.check_output_file("--out", out)
    meta = {
        "num_steps": args.steps,
        "model_id": args.model_id,
        "predictor": args.predictor,
        "predictor_order": args.order,
        "first_full_steps": args.first_full,
        "last_full_steps": args.last_full,
        "max_jump": args.max_jump,
        "sentinel_alpha": args.sentinel_alpha,
        "dtype": args.dtype,
    }
    tensor = convert(args.src, out, **meta)
    print(
        f"wrote {out} (T={tensor.num_steps}, model_id={tensor.meta.model_id!r}, source={tensor.meta.source!r})"
    )
    return 0


def plot_cost_tensor(tensor: CostTensor, png: str | Path, opts: dict) -> None:
    """`dpcache inspect --plot`: the heatmap of log10 min_a C[a, i, j] and the path cost vs budget K of every
    solver (planning options `opts`), written to `png`. Needs matplotlib (`pip install 'dpcache[harness]'`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DPCacheError("--plot needs matplotlib; pip install 'dpcache[harness]' or matplotlib") from None
    best = tensor.cost.min(axis=0)
    shown = np.ma.masked_invalid(np.log10(np.where(best > 0, best, np.nan)))
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.5))
    im = ax0.imshow(shown, origin="lower", cmap="viridis", aspect="auto")
    ax0.set(title="log10 min_a C[a, i, j]", xlabel="j (last predicted step)", ylabel="i (key step)")
    fig.colorbar(im, ax=ax0)
    for solver in SOLVERS:
        curve = plan_all_budgets(tensor, **{**opts, "solver": solver})
        ax1.plot(list(curve), [s.path_cost for s in curve.values()], marker=".", label=solver)
    ax1.set(title="path cost vs budget K", xlabel="K", ylabel="path cost", yscale="log")
    ax1.legend()
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def cmd_inspect(args: argparse.Namespace) -> int:
    args.steps = None
    _check_planning_flags(args)
    ca.check_output_file("--plot", args.plot)
    tensor = load_cost_tensor(args.file, args)
    meta = tensor.meta
    for name, value in vars(meta).items():
        print(f"{name:>17}: {value}")
    finite = np.isfinite(tensor.cost)
    print(f"{'shape':>17}: {tensor.cost.shape}")
    print(f"{'finite fraction':>17}: {finite.mean():.4f} ({int(finite.sum())} cells)")
    if finite.any():
        vals = tensor.cost[finite]
        print(f"{'finite range':>17}: [{vals.min():.6g}, {vals.max():.6g}]")
    args.max_jump, args.solver = None, "exact"
    opts = _planning_options(tensor, args)
    mand = mandatory_steps(tensor.num_steps, opts["first_full_steps"], opts["last_full_steps"])
    try:
        feasible = sorted(plan_all_budgets(tensor, **opts))
        print(f"{'feasible budgets':>17}: K={feasible[0]}..{feasible[-1]} (mandatory steps {mand})")
    except DPCacheError as exc:
        print(f"{'feasible budgets':>17}: none ({exc})")
        feasible = []
    if args.plot:
        if not feasible:
            raise DPCacheError("nothing to plot: no budget has a finite-cost schedule")
        plot_cost_tensor(tensor, args.plot, opts)
        print(f"wrote {args.plot}")
    return 0


def _add_planning_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--first-full", type=int, default=None, metavar="M", help="steps 0..M-1 are always computed"
    )
    p.add_argument(
        "--last-full", type=int, default=None, metavar="L", help="the last L steps are always computed"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ca.OneLineParser(prog="dpcache", description="DPCache: cost tensors and key-step schedules.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("plan", help="pick K key steps from a cost tensor")
    p.add_argument("--cost", required=True, metavar="FILE", help=".safetensors cost tensor or bare .npy")
    p.add_argument("--budget", required=True, metavar="K[,K…]", help="budget(s): 13, 9,13, 5-25 or all")
    p.add_argument("--steps", type=int, default=None, metavar="T", help="expected number of steps (checked)")
    _add_planning_flags(p)
    p.add_argument("--max-jump", type=int, default=None, metavar="J", help="max distance between key steps")
    p.add_argument("--solver", choices=SOLVERS, default="exact")
    p.add_argument("--json", action="store_true", help="print JSON (a list when several budgets)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("convert", help="convert a released .pkl / .npy tensor to .safetensors")
    p.add_argument("src", metavar="SRC")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    p.add_argument("--model-id", default="")
    p.add_argument("--steps", type=int, default=None, metavar="T")
    p.add_argument("--predictor", default="taylor")
    p.add_argument("--order", type=int, default=2)
    p.add_argument("--first-full", type=int, default=3, metavar="M")
    p.add_argument("--last-full", type=int, default=0, metavar="L")
    p.add_argument(
        "--max-jump", type=int, default=None, metavar="J", help="calibration's max anchor distance"
    )
    p.add_argument("--sentinel-alpha", type=float, default=0.8)
    p.add_argument("--dtype", default="", help="model dtype used for calibration, e.g. float16")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("inspect", help="show a cost tensor's metadata and statistics")
    p.add_argument("file", metavar="FILE")
    _add_planning_flags(p)
    p.add_argument("--plot", metavar="PNG", default=None, help="write a heatmap and the cost-vs-K curve")
    p.set_defaults(func=cmd_inspect)

    from dpcache.cli_pipeline import register_pipeline_commands

    register_pipeline_commands(sub)
    from dpcache.cli_tune import register_tune_commands

    register_tune_commands(sub)  # `tune`, and `generate --schedule-file`
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dpcache` command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a one-line usage error already printed
        return int(e.code or 0)
    except KeyboardInterrupt:
        print("dpcache: interrupted", file=sys.stderr)
        return ca.EXIT_INTERRUPTED
    return ca.run_main("dpcache", args.func, args)


if __name__ == "__main__":
    raise SystemExit(main())
