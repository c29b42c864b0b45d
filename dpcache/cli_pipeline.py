"""CLI subcommands that run a pipeline: `dpcache calibrate` and `dpcache generate`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import cli_args as ca
from .errors import DPCacheError, InputFileError

CALL_DEFAULTS_FILE = "dpcache_call.json"


def load_pipeline(path_or_id: str, device: str = "cpu", dtype: str | None = None):
    """A diffusers pipeline from a local directory or the Hugging Face cache (never downloads when
    HF_HUB_OFFLINE is set)."""
    import os

    import torch
    from diffusers import DiffusionPipeline

    kwargs = {}
    if dtype:
        kwargs["torch_dtype"] = getattr(torch, dtype)
    local = Path(path_or_id).is_dir()
    if not local and os.environ.get("HF_HUB_OFFLINE"):
        kwargs["local_files_only"] = True
    try:
        pipe = DiffusionPipeline.from_pretrained(path_or_id, **kwargs)
    except (OSError, ValueError) as exc:
        raise DPCacheError(f"cannot load pipeline {path_or_id!r}: {str(exc).splitlines()[0]}") from None
    pipe.to(device)
    return pipe


def call_defaults(path_or_id: str) -> dict:
    """Default call kwargs shipped next to a pipeline (`dpcache_call.json`), e.g. a tiny model's size."""
    f = Path(path_or_id) / CALL_DEFAULTS_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(f, f"unreadable call defaults ({ca.one_line(exc)})") from None
    if not isinstance(data, dict):
        raise InputFileError(f, "call defaults must be a JSON object")
    return data


def prompt_kwargs(pipe, prompt: str) -> dict:
    """How a prompt becomes pipeline input: text, or a class label for class-conditional DiT."""
    if type(pipe).__name__ == "DiTPipeline":
        if prompt.strip().isdigit():
            return {"class_labels": [int(prompt)]}
        try:
            return {"class_labels": pipe.get_label_ids([prompt])}
        except ValueError as exc:
            raise DPCacheError(str(exc).splitlines()[0]) from None
    return {"prompt": prompt}


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise DPCacheError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _call_kwargs(args: argparse.Namespace) -> dict:
    kwargs = call_defaults(args.pipeline)
    for flag, key in (
        ("height", "height"),
        ("width", "width"),
        ("frames", "num_frames"),
        ("guidance", "guidance_scale"),
    ):
        if getattr(args, flag, None) is not None:
            kwargs[key] = getattr(args, flag)
    kwargs.update(_parse_sets(args.set))
    kwargs.pop("num_inference_steps", None)
    return kwargs


def check_pipeline_args(args: argparse.Namespace, call: dict) -> None:
    """Everything `calibrate` / `generate` get, checked before the pipeline loads (`dpcache.cli_args`)."""
    local = Path(args.pipeline).is_dir()
    limit = ca.model_step_limit(args.pipeline if local else None)
    ca.check_steps(args.steps, limit)
    ca.int_in("--order", args.order, 0, ca.MAX_ORDER)
    ca.int_in("--first-full", args.first_full, 0, args.steps, "at most --steps")
    ca.int_in(
        "--last-full",
        args.last_full,
        0,
        args.steps - args.first_full,
        "--first-full + --last-full <= --steps",
    )
    ca.int_in("--seed", args.seed, 0, ca.MAX_SEED - 10_000)
    args.device = ca.resolve_device(args.device)
    if args.dtype is not None and args.dtype not in ("float32", "float16", "bfloat16", "float64"):
        raise ca.UsageError(f"--dtype must be float32, float16, bfloat16 or float64, got {args.dtype!r}")
    ca.check_call_kwargs(call)


def _is_video(pipe) -> bool:
    import inspect

    return "num_frames" in inspect.signature(type(pipe).__call__).parameters


def _save_output(output, out: Path) -> list[Path]:
    """Save images (PNG) or video frames (an animated GIF) of a pipeline output; returns the files."""
    import numpy as np
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    frames = getattr(output, "frames", None)
    if frames is not None:
        video = np.asarray(frames[0])  # output_type="np": (frames, H, W, C) in [0, 1]
        imgs = [Image.fromarray((np.clip(f, 0, 1) * 255).round().astype("uint8")) for f in video]
        target = out.with_suffix(".gif")
        imgs[0].save(target, save_all=True, append_images=imgs[1:], duration=120, loop=0)
        return [target]
    images = output.images
    paths = []
    for i, img in enumerate(images):
        target = out if len(images) == 1 else out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}")
        target = target if target.suffix else target.with_suffix(".png")
        img.save(target)
        paths.append(target)
    return paths


def _names_of(pipeline: str) -> set[str]:
    """Names a cost tensor's model_id may use for this pipeline: as given, resolved, and its folder name."""
    p = Path(pipeline)
    return {pipeline, str(p.resolve()), p.name}


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from .hooks import DPCacheConfig, apply_dpcache, dpcache_stats

    if args.no_cache == (args.cost is not None):
        raise DPCacheError("give either --cost FILE --budget K, or --no-cache")
    if args.cost is not None and args.budget is None:
        raise DPCacheError("--cost needs --budget K")
    call = _call_kwargs(args)
    check_pipeline_args(args, call)
    ca.int_in("--budget", args.budget, 1, args.steps, "at most --steps")
    ca.check_output_file("--out", args.out)
    cfg = None
    if args.cost is not None:
        from .cost_tensor import CostTensor

        cost = CostTensor.load(args.cost)
        cost.check_compatible(num_steps=args.steps, predictor="taylor", predictor_order=args.order)
        if not args.any_model and cost.meta.model_id not in _names_of(args.pipeline):
            raise DPCacheError(
                f"{args.cost} was calibrated for model {cost.meta.model_id!r}, not {args.pipeline!r}; "
                "calibrate this pipeline, or pass --any-model to use it anyway"
            )
        cfg = DPCacheConfig(
            num_inference_steps=args.steps,
            budget=args.budget,
            cost=cost,
            first_full_steps=args.first_full,
            last_full_steps=args.last_full,
            order=args.order,
            solver=args.solver,
        )
        cfg.schedule = cfg.resolve_schedule()  # plan before the slow model load, so bad input fails fast
    pipe = load_pipeline(args.pipeline, args.device, args.dtype)
    schedule = apply_dpcache(pipe, cfg) if cfg is not None else None
    kwargs = {**call, **prompt_kwargs(pipe, args.prompt)}
    kwargs["output_type"] = "np" if _is_video(pipe) else "pil"
    gen = torch.Generator("cpu").manual_seed(args.seed)
    start = time.perf_counter()
    output = pipe(num_inference_steps=args.steps, generator=gen, **kwargs)
    seconds = time.perf_counter() - start
    files = _save_output(output, Path(args.out))
    print(f"wrote {', '.join(map(str, files))} in {seconds:.2f} s")
    if schedule is not None:
        for name, run in dpcache_stats(pipe).items():
            print(
                f"  {name}: {len(run.computed_steps)} key steps {run.computed_steps}, {run.cache_hits} predicted"
            )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibration import calibrate
    from .predictors import TaylorPredictor
    from .prompts import calibration_seeds, load_prompts

    ca.int_in("--sample-size", args.sample_size, 0, None, "0 takes every prompt")
    base = call_defaults(args.pipeline)
    extra = {**base, **_parse_sets(args.set)}
    extra.pop("num_inference_steps", None)
    check_pipeline_args(args, extra)
    need = args.order + 2  # the predictor's history plus the step it predicts
    ca.int_in(
        "--steps", args.steps, need, ca.MAX_STEPS, f"an order-{args.order} predictor needs {need} steps"
    )
    work_dir = args.work_dir or f"{Path(args.out).with_suffix('')}.parts"
    ca.check_output_file("--out", args.out)
    ca.check_output_dir("--work-dir", work_dir)
    try:
        prompts = load_prompts(args.prompts, args.sample_rule, args.sample_size)
    except (OSError, ValueError) as exc:
        raise ca.UsageError(f"--prompts {args.prompts}: {ca.one_line(exc)}") from None
    ca.check_memory(
        f"calibrating T={args.steps} on {len(prompts)} prompts (float64 cost tensors)",
        ca.cost_tensor_bytes(args.steps, len(prompts)),
        "--steps",
    )
    pipe = load_pipeline(args.pipeline, args.device, args.dtype)
    ct = calibrate(
        pipe,
        prompts,
        num_inference_steps=args.steps,
        predictor=TaylorPredictor(order=args.order),
        seeds=calibration_seeds(len(prompts), args.seed),
        model_id=args.model_id or args.pipeline,
        prompt_to_kwargs=lambda p: prompt_kwargs(pipe, p),
        call_kwargs=extra,
        context=args.context,
        work_dir=work_dir,
        first_full_steps=args.first_full,
        last_full_steps=args.last_full,
        device=args.device,
        out=args.out,
    )
    print(f"wrote {args.out}: T={ct.num_steps}, {len(prompts)} prompts; per-prompt parts kept in {work_dir}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", required=True, help="local pipeline directory or hub id (from the HF cache)")
    p.add_argument("--steps", type=int, default=50, help="number of inference steps T (default 50)")
    p.add_argument("--order", type=int, default=2, help="Taylor predictor order (default 2)")
    p.add_argument("--first-full", type=int, default=3, help="steps 0..M-1 always computed (default 3)")
    p.add_argument("--last-full", type=int, default=0, help="final L steps always computed (default 0)")
    p.add_argument("--seed", type=int, default=42, help="seed (calibration: prompt i uses seed + i)")
    p.add_argument("--device", default="cpu", help="cpu, cuda (cuda:N), mps or auto (default cpu)")
    p.add_argument("--dtype", default=None, help="torch dtype for the pipeline, e.g. bfloat16")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="extra pipeline call argument (JSON value)"
    )


def register_pipeline_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the `calibrate` and `generate` subcommands to the `dpcache` CLI."""
    p = subparsers.add_parser("calibrate", help="run a pipeline at full compute and build its cost tensor")
    _common(p)
    p.add_argument("--prompts", default="drawbench", help="drawbench, parti, or a prompt file")
    p.add_argument("--sample-rule", choices=["fix", "random"], default="fix")
    p.add_argument("--sample-size", type=int, default=10)
    p.add_argument("--context", default="cond", help="cache context (CFG branch) to record (default cond)")
    p.add_argument("--model-id", default=None, help="model id recorded in the metadata")
    p.add_argument("--work-dir", default=None, help="per-prompt parts, for resuming (default OUT.parts)")
    p.add_argument("--out", required=True, help="the .safetensors cost tensor to write")
    p.set_defaults(func=cmd_calibrate)

    p = subparsers.add_parser("generate", help="sample with DPCache (or uncached with --no-cache)")
    _common(p)
    p.add_argument("--prompt", required=True, help="text prompt (DiT: a class label or its name)")
    p.add_argument("--cost", default=None, help=".safetensors cost tensor to plan from")
    p.add_argument("--budget", type=int, default=None, help="K, the number of key steps")
    p.add_argument(
        "--solver",
        choices=["exact", "official"],
        default="official",
        help="planner (default: the released recurrence)",
    )
    p.add_argument("--no-cache", action="store_true", help="run every step at full compute")
    p.add_argument(
        "--any-model", action="store_true", help="accept a cost tensor calibrated on another model"
    )
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--out", default="dpcache-out.png", help="output file (video: .gif)")
    p.set_defaults(func=cmd_generate)
