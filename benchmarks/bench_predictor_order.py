"""Separate DPCache's schedule from its predictor: one key-step schedule, sampled with Taylor orders 0, 1, 2.

For a tiny model and a number of key steps, the DP plan of the model's order-2 cost tensor (as the suites
calibrate it) and the same number of uniformly spread key steps are each sampled with predictor orders
0 (reuse), 1 and 2 (released), and compared by PSNR against the 50-step output; plain sampling with as many
steps is the floor. Also prints each schedule's calibrated path cost, to see whether the tensor ranks the
schedules as the samples do.

Run: ``python benchmarks/bench_predictor_order.py wan-tiny --key-steps 11 [--prompts 4] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a tiny model name (dpcache-bench models)")
    ap.add_argument("--key-steps", type=int, default=11)
    ap.add_argument("--prompts", type=int, default=4, help="evaluation prompts")
    ap.add_argument("--cache-dir", default=".dpcache-cache", help="where the suites keep cost tensors")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    from dpcache import DPCacheConfig, apply_dpcache, plan, remove_dpcache
    from dpcache.planner import path_cost
    from harness.context import ModelContext, pipeline_weights_hash
    from harness.methods import DPCacheMethod
    from harness.metrics import psnr
    from harness.zoo.registry import get_spec, load_pipeline
    from zoo_training.measure import reuse_schedule

    torch.set_num_threads(1)
    spec = get_spec(args.model)
    pipe = load_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    ctx = ModelContext(
        spec,
        pipe,
        spec.num_inference_steps,
        tuple(spec.calibration_prompts[:4]),
        tuple(spec.evaluation_prompts),
        pipeline_weights_hash(pipe, spec.path),
        Path(args.cache_dir),
        progress=False,
    )
    method = DPCacheMethod()
    first, _ = method.settings(ctx)
    cost = method.cost_tensor(ctx)
    prompts = list(spec.evaluation_prompts)[: args.prompts]
    refs = [ctx.call(p, 42 + i) for i, p in enumerate(prompts)]

    def mean_psnr(outs: list) -> float:
        return round(float(np.mean([float(psnr(o, r)) for o, r in zip(outs, refs)])), 2)

    k, T = args.key_steps, ctx.num_steps
    result: dict = {"model": args.model, "key_steps": k, "prompts": len(prompts)}
    result["plain"] = mean_psnr([ctx.call(p, 42 + i, steps=k) for i, p in enumerate(prompts)])
    print(f"{args.model}: plain {k}-step sampling {result['plain']} dB")
    schedules = {
        "dp (order-2 tensor)": list(plan(cost, k, first_full_steps=first).key_steps),
        "uniform": reuse_schedule(T, k, first),
    }
    for label, steps in schedules.items():
        row = {"schedule": steps, "path_cost": round(path_cost(cost, steps), 4)}
        for order in (0, 1, 2):
            cfg = DPCacheConfig(num_inference_steps=T, schedule=steps, order=order, first_full_steps=first)
            apply_dpcache(pipe, cfg)
            try:
                row[f"order{order}"] = mean_psnr([ctx.call(p, 42 + i) for i, p in enumerate(prompts)])
            finally:
                remove_dpcache(pipe)
        result[label] = row
        orders = " / ".join(str(row[f"order{o}"]) for o in (0, 1, 2))
        print(f"  {label:20s} path cost {row['path_cost']:.3f}  PSNR order 0 / 1 / 2: {orders} dB  {steps}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
