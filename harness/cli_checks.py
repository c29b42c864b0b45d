"""`dpcache-bench` argument checks: the model, its limits and the output paths, all before anything loads
(built on the shared layer `dpcache.cli_args`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from dpcache import cli_args as ca
from dpcache.errors import UsageError


class BenchUsageError(UsageError):
    """Bad command-line input: reported on one line, exit status 2 (the `dpcache` CLI's UsageError)."""


def _budgets(text: str) -> list[int]:
    try:
        values = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise BenchUsageError(f"--budgets must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise BenchUsageError(f"--budgets must be positive integers, got {text!r}")
    return values


def check_model(name: str, random_weights: bool = False) -> Any:
    """The spec of an available model, or BenchUsageError naming the known models / why it is absent."""
    from harness.zoo.registry import availability, get_spec

    try:
        spec = get_spec(name)
    except KeyError as e:
        raise BenchUsageError(str(e).strip("'\"")) from None
    if random_weights:
        if spec.builder is None:
            raise BenchUsageError(f"--random-weights needs a tiny/medium model with a builder, not {name}")
        return spec
    ok, reason = availability(spec)
    if not ok:
        raise BenchUsageError(f"model {name} is not available here: {reason}")
    return spec


def configure_threads(threads: int | None) -> None:
    """One torch thread per process on CPU by default (oversubscribed cores run tiny models 5x slower);
    `--threads` (checked: >= 1) or $DPCACHE_THREADS otherwise."""
    import torch

    if threads is None:
        env = os.environ.get("DPCACHE_THREADS", "1")
        try:
            threads = int(env)
        except ValueError:
            raise BenchUsageError(f"DPCACHE_THREADS must be an integer, got {env!r}") from None
        ca.int_in("DPCACHE_THREADS", threads, 1, ca.MAX_THREADS)
    torch.set_num_threads(ca.check_threads(threads))


def check_run_args(args: argparse.Namespace, spec: Any) -> tuple[int, list[int]]:
    """(T, budgets) after every `run` argument is checked against the model, before anything loads or is
    written: bounds from the model's scheduler and prompt sets, a memory estimate, and the output paths."""
    limit = ca.model_step_limit(spec.path if spec.scale != "medium" else None)
    ca.check_steps(args.steps, limit)
    steps = args.steps or spec.num_inference_steps
    budgets = _budgets(args.budgets)
    if max(budgets) > steps:
        raise BenchUsageError(f"--budgets {args.budgets}: a budget exceeds T={steps} steps")
    n_eval, n_cal = len(spec.evaluation_prompts), len(spec.calibration_prompts)
    ca.int_in("--num-prompts", args.num_prompts, 1, n_eval, f"{spec.name} has {n_eval} evaluation prompts")
    ca.int_in(
        "--calibration-prompts",
        args.calibration_prompts,
        1,
        n_cal,
        f"{spec.name} has {n_cal} calibration prompts",
    )
    ca.int_in("--repeats", args.repeats, 0, ca.MAX_REPEATS, "0: no wall-clock timing")
    ca.check_threads(args.threads)
    args.device = ca.resolve_device(args.device)
    asked = [m.strip() for m in args.methods.split(",")]
    if {"all", "default"} & set(asked) or any(m.startswith("dpcache") for m in asked):
        ca.check_memory(
            f"DPCache's cost tensor at T={steps} over {args.calibration_prompts} calibration prompts",
            ca.cost_tensor_bytes(steps, args.calibration_prompts),
            "--steps",
        )
    ca.check_output_file("--json-out", args.json_out)
    ca.check_output_dir("--report", args.report)
    from harness.context import resolve_cache_dir

    ca.check_output_dir("--cache-dir", str(resolve_cache_dir(args.cache_dir)))
    ca.check_output_dir("--refs-dir", args.refs_dir)
    return steps, budgets
