"""CLI: `dpcache tune` (search DPCache's settings on calibration prompts) and `generate --schedule-file`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .errors import DPCacheError


def _ints(text: str, allow_none: bool = False) -> tuple:
    out = []
    for part in (x.strip() for x in text.split(",") if x.strip()):
        if allow_none and part.lower() == "none":
            out.append(None)
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise DPCacheError(f"expected comma-separated integers, got {text!r}") from None
    if not out:
        raise DPCacheError(f"empty list: {text!r}")
    return tuple(out)


def _load_tensors(paths: list[str], steps: int | None) -> dict:
    from .cost_tensor import CostTensor

    tensors = {}
    for path in paths:
        t = CostTensor.load(path)
        if steps is not None:
            t.check_compatible(num_steps=steps)
        order = int(t.meta.predictor_order)
        if order in tensors:
            raise DPCacheError(f"two --cost tensors for Taylor order {order}: give one per order")
        tensors[order] = t
    return tensors


def _check_model(model_id: str, pipeline: str, any_model: bool, what: str) -> None:
    from .cli_pipeline import _names_of

    if not any_model and model_id not in _names_of(pipeline):
        raise DPCacheError(
            f"{what} is for model_id {model_id!r}, not {pipeline!r}; tune/calibrate this pipeline, "
            "or pass --any-model to use it anyway"
        )


def cmd_tune(args: argparse.Namespace) -> int:
    from .cli_pipeline import _parse_sets, call_defaults, load_pipeline, prompt_kwargs
    from .prompts import calibration_seeds, load_prompts
    from .tune import TuneSpace, tune

    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise DPCacheError(f"--out must end in .json, got {out}")
    tensors = _load_tensors(args.cost, args.steps)
    main = tensors[max(tensors)]
    _check_model(main.meta.model_id, args.pipeline, args.any_model, f"cost tensor {args.cost[-1]}")
    space = TuneSpace(
        solvers=tuple(s.strip() for s in args.solvers.split(",") if s.strip()),
        orders=_ints(args.orders),
        first_full_steps=_ints(args.first_full),
        last_full_steps=_ints(args.last_full),
        max_extrapolation=_ints(args.max_extrapolation, allow_none=True),
        aligned=args.aligned,
        per_segment=not args.no_per_segment,
        refine_radius=args.refine_radius,
        refine_passes=args.refine_passes,
        max_samples=args.max_samples,
    )
    prompts = load_prompts(args.prompts, args.sample_rule, args.sample_size)
    validation: list[str] = []
    if args.validation_prompts:  # other prompts of that source than the search's, in file order
        pool = load_prompts(args.validation_prompts, "fix", None)
        if args.validation_size < 1:
            raise DPCacheError(f"--validation-size must be >= 1, got {args.validation_size}")
        validation = [p for p in pool if p not in prompts][: args.validation_size]
        if not validation:
            raise DPCacheError(f"{args.validation_prompts} has no prompt the search does not already use")
    pipe = load_pipeline(args.pipeline, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)  # one bar for the whole search, not one per sample
    extra = {**call_defaults(args.pipeline), **_parse_sets(args.set)}
    extra.pop("num_inference_steps", None)
    start = time.perf_counter()
    result = tune(
        pipe,
        tensors,
        args.budget,
        prompts,
        seeds=calibration_seeds(len(prompts), args.seed),
        num_inference_steps=args.steps or main.num_steps,
        prompt_to_kwargs=lambda p: prompt_kwargs(pipe, p),
        call_kwargs=extra,
        space=space,
        model_id=args.model_id or main.meta.model_id or args.pipeline,
        cache_dir=args.cache_dir or out.with_suffix(".tune-cache"),
        out=out,
        progress=not args.no_progress,
        validation_prompts=validation,
    )
    s = result.schedule
    print(f"wrote {out}: K={s.budget} of T={s.num_steps}, {len(prompts)} calibration prompts")
    print(f"  key steps {s.key_steps}")
    print(f"  segment orders {s.segment_orders}")
    shown = {k: v for k, v in s.settings.items() if k not in ("segment_orders",)}
    print(f"  settings {shown}")
    print(
        f"  calibration PSNR {s.calibration_score:.3f} dB (released settings {s.released_score:.3f} dB), "
        f"{len(s.candidates)} candidates"
    )
    print(
        f"  samples: {s.samples} for the whole search, {result.samples_run} run now "
        f"({time.perf_counter() - start:.1f} s)"
        + (f"; stopped early: {result.stopped}" if result.stopped else "")
    )
    return 0


def cmd_generate_tuned(args: argparse.Namespace) -> int:
    """`dpcache generate --schedule-file FILE`: sample with a tuned schedule (checked before loading)."""
    import torch

    from .cli_pipeline import _call_kwargs, _is_video, _save_output, load_pipeline, prompt_kwargs
    from .hooks import DPCacheConfig, apply_dpcache, dpcache_stats
    from .schedule_file import ScheduleFile, ScheduleFileMismatchError

    if args.cost is not None or args.budget is not None or args.no_cache:
        raise DPCacheError("--schedule-file replaces --cost / --budget / --no-cache; give only one of them")
    tuned = ScheduleFile.load(args.schedule_file)
    if not args.any_model and tuned.model_id not in _names(args.pipeline):
        raise ScheduleFileMismatchError(
            f"schedule file {args.schedule_file} does not match this configuration (model_id: expected "
            f"{args.pipeline!r}, found {tuned.model_id!r}); tune this pipeline, or pass --any-model"
        )
    cfg = DPCacheConfig(num_inference_steps=args.steps, schedule_file=args.schedule_file, order=args.order)
    pipe = load_pipeline(args.pipeline, args.device, args.dtype)
    apply_dpcache(pipe, cfg)
    kwargs = {**_call_kwargs(args), **prompt_kwargs(pipe, args.prompt)}
    kwargs["output_type"] = "np" if _is_video(pipe) else "pil"
    gen = torch.Generator("cpu").manual_seed(args.seed)
    start = time.perf_counter()
    output = pipe(num_inference_steps=args.steps, generator=gen, **kwargs)
    files = _save_output(output, Path(args.out))
    print(f"wrote {', '.join(map(str, files))} in {time.perf_counter() - start:.2f} s")
    for name, run in dpcache_stats(pipe).items():
        print(
            f"  {name}: {len(run.computed_steps)} key steps {run.computed_steps}, {run.cache_hits} predicted"
        )
    return 0


def _names(pipeline: str) -> set[str]:
    from .cli_pipeline import _names_of

    return _names_of(pipeline)


def _extend_generate(generate: argparse.ArgumentParser) -> None:
    original = generate.get_default("func")
    generate.add_argument("--schedule-file", default=None, help="a schedule file written by `dpcache tune`")
    generate.set_defaults(order=None)  # None = not given: 2 for --cost, the file's order for --schedule-file

    def func(args: argparse.Namespace) -> int:
        if args.schedule_file is not None:
            return cmd_generate_tuned(args)
        if args.order is None:
            args.order = 2
        return original(args)

    generate.set_defaults(func=func)


def register_tune_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `dpcache tune`, and `--schedule-file` to `dpcache generate` (registered before this)."""
    if "generate" in subparsers.choices:
        _extend_generate(subparsers.choices["generate"])
    p = subparsers.add_parser("tune", help="choose DPCache's settings for a budget on calibration prompts")
    p.add_argument("--pipeline", required=True, help="local pipeline directory or hub id (from the HF cache)")
    p.add_argument("--steps", type=int, default=None, help="T (default: the cost tensor's)")
    p.add_argument("--seed", type=int, default=42, help="prompt i uses seed + i (as calibration)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="torch dtype for the pipeline, e.g. bfloat16")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra pipeline call argument (JSON)")
    p.add_argument("--cost", required=True, action="append", help="cost tensor; repeat for one per order")
    p.add_argument("--budget", required=True, type=int, help="K, the number of key steps")
    p.add_argument("--prompts", default="drawbench", help="calibration prompts: drawbench, parti or a file")
    p.add_argument("--sample-rule", choices=["fix", "random"], default="fix")
    p.add_argument("--sample-size", type=int, default=10)
    p.add_argument("--out", required=True, help="the .json schedule file to write")
    p.add_argument("--cache-dir", default=None, help="references and scores (default OUT.tune-cache)")
    p.add_argument("--solvers", default="official,exact")
    p.add_argument("--orders", default="2,1,0", help="Taylor orders to try (default 2,1,0)")
    p.add_argument("--first-full", default="2,3,4", help="first full steps to try")
    p.add_argument("--last-full", default="0,1,2", help="last full steps to try")
    p.add_argument("--max-extrapolation", default="none,10,7,5", help="caps on predicted runs to try")
    p.add_argument("--refine-radius", type=int, default=2, help="move key steps by up to ±D (0: off)")
    p.add_argument("--refine-passes", type=int, default=1)
    p.add_argument("--no-per-segment", action="store_true", help="one order for every segment")
    p.add_argument(
        "--aligned",
        action="store_true",
        help="also polish a second branch from key steps at a plain K-step sampler's times, order 0 (BudCache's "
        "re-alignment); give --validation-prompts to choose between the branches on other prompts",
    )
    p.add_argument(
        "--validation-prompts",
        default=None,
        help="prompt source (as --prompts) whose prompts not used by the search choose between branches",
    )
    p.add_argument("--validation-size", type=int, default=4, help="validation prompts to use (default 4)")
    p.add_argument("--max-samples", type=int, default=None, help="cap on pipeline calls (cheaper search)")
    p.add_argument("--model-id", default=None, help="model id recorded in the file (default: the tensor's)")
    p.add_argument("--any-model", action="store_true", help="accept a tensor calibrated on another model")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_tune)
