"""What a port change does at matched compute: PSNR against the full-compute output at budgets K (flux-tiny).

Run: ``python -m benchmarks.fidelity.effect --method toca --budgets 13,9 --label after --out notes.jsonl``. The
method's knob is searched as the harness does (`harness.methods.BaselineMethod`, measured compute = K on the
calibration prompts); each evaluation prompt is sampled with the cache and at full compute (T steps) and compared.
`--override module:Class.field=value` sets a config field after construction (e.g. OmniCache's EMA weight) to
measure one design choice at the same schedule. Run the "before" side from an old tree holding `baselines/` and
`benchmarks/` (``cd <old> && PYTHONPATH=<old> python -m benchmarks.fidelity.effect ...``: `python -m` puts the
working directory first on sys.path); each row records which `baselines` directory ran.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path


def _override(spec: str) -> None:
    """`module:Class.field=value`: every new Class instance gets field = value (a float, int or string)."""
    target, value = spec.split("=", 1)
    module, path = target.split(":")
    cls_name, fld = path.split(".")
    cls = getattr(importlib.import_module(module), cls_name)
    parsed: object = value
    for cast in (int, float):
        try:
            parsed = cast(value)
            break
        except ValueError:
            continue
    init = cls.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        setattr(self, fld, parsed)

    cls.__init__ = patched


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--model", default="flux-tiny")
    ap.add_argument("--budgets", default="13,9")
    ap.add_argument("--steps", type=int, default=None, help="T (default: the model's)")
    ap.add_argument("--prompts", type=int, default=4, help="evaluation prompts (seeds 100, 101, ...)")
    ap.add_argument("--calibration-prompts", type=int, default=4)
    ap.add_argument(
        "--cache-dir", default=None, help="budget / calibration cache (default: a fresh temp dir)"
    )
    ap.add_argument("--label", default="", help="e.g. before / after / ema0.7")
    ap.add_argument("--override", action="append", default=[])
    ap.add_argument("--knobs", default=None, help="fixed knob values instead of budgets (no search)")
    ap.add_argument("--out", default=None, help="append one JSON line per budget here")
    args = ap.parse_args(argv)

    import tempfile

    import torch

    import baselines
    from baselines.base import get_method
    from harness.context import ModelContext, pipeline_weights_hash
    from harness.methods import BaselineMethod, UnreachableBudget

    from .common import load_model, psnr

    torch.set_num_threads(1)
    code = str(Path(baselines.__file__).parent)  # which `baselines` ran (before / after trees)
    for spec in args.override:
        _override(spec)
    model = load_model(args.model)
    spec = model.spec
    steps = args.steps or spec.num_inference_steps
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="fid-effect-"))
    ctx = ModelContext(
        spec,
        model.pipe,
        steps,
        tuple(spec.calibration_prompts[: args.calibration_prompts]),
        tuple(spec.evaluation_prompts[: args.prompts]),
        pipeline_weights_hash(model.pipe, spec.path),
        cache_dir,
        progress=False,
    )
    method = BaselineMethod(get_method(args.method))
    prompts = list(ctx.evaluation_prompts)
    refs = [model.sample(p, 100 + i, steps) for i, p in enumerate(prompts)]
    if args.knobs:
        m = method.method
        artifacts = method.artifacts(ctx)
        for value in [float(v) for v in args.knobs.split(",")]:
            measured = ctx.search_compute(
                lambda v=value: m.apply(model.pipe, v, steps, artifacts), lambda: m.remove(model.pipe)
            )
            m.apply(model.pipe, value, steps, artifacts)
            try:
                outs = [model.sample(p, 100 + i, steps) for i, p in enumerate(prompts)]
            finally:
                m.remove(model.pipe)
            values = [psnr(o, r) for o, r in zip(outs, refs, strict=True)]
            row = {"method": args.method, "model": args.model, "T": steps, "knob": value, "label": args.label}
            row |= {
                "overrides": args.override,
                "measured_K": round(measured, 4),
                "psnr": values,
                "code": code,
            }
            row["psnr_mean"] = sum(values) / len(values)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
        return 0
    for k in [int(b) for b in args.budgets.split(",")]:
        row = {"method": args.method, "model": args.model, "T": steps, "K": k, "label": args.label}
        row["overrides"], row["code"] = args.override, code
        try:
            cfg = method.configure(ctx, k)
        except UnreachableBudget as e:
            row["unreachable"] = str(e)
        else:
            cfg.apply()
            try:
                outs = [model.sample(p, 100 + i, steps) for i, p in enumerate(prompts)]
            finally:
                cfg.remove()
            values = [psnr(o, r) for o, r in zip(outs, refs, strict=True)]
            row |= {"knobs": cfg.knobs, "psnr": values, "psnr_mean": sum(values) / len(values)}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
