"""The README's main job on CPU: calibrate the bundled flux-tiny pipeline, plan key steps, sample with DPCache.

python -m harness.quickstart [--model flux-tiny] [--budgets 25,13,9] [--out reports/quickstart]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _psnr(a, b) -> float:
    import torch

    mse = float(torch.mean((a.float() - b.float()) ** 2))
    return 100.0 if mse == 0 else min(100.0, 10 * torch.log10(torch.tensor(1.0 / mse)).item())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="flux-tiny")
    ap.add_argument("--budgets", default="25,13,9")
    ap.add_argument("--calibration-prompts", type=int, default=4)
    ap.add_argument("--out", default="reports/quickstart")
    args = ap.parse_args(argv)

    import torch
    from PIL import Image

    from dpcache import (
        DPCacheConfig,
        apply_dpcache,
        calibrate,
        dpcache_stats,
        plan_all_budgets,
        remove_dpcache,
    )
    from dpcache.cli import schedule_strip
    from harness.zoo.registry import get_spec, load_pipeline

    spec = get_spec(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    T = spec.num_inference_steps
    pipe = load_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)

    def kwargs(prompt):
        kw = spec.pipeline_kwargs(prompt, T)
        kw.pop("num_inference_steps")
        return kw

    cost_file = out / f"{spec.name}_T{T}.safetensors"
    prompts = list(spec.calibration_prompts[: args.calibration_prompts])
    print(f"1/3 calibrating {spec.name} on {len(prompts)} prompts, T={T} -> {cost_file}")
    ct = calibrate(
        pipe,
        prompts,
        num_inference_steps=T,
        model_id=spec.name,
        prompt_to_kwargs=kwargs,
        work_dir=out / "calibration-parts",
        out=cost_file,
    )
    budgets = [int(b) for b in args.budgets.split(",")]
    schedules = plan_all_budgets(ct, first_full_steps=3, budgets=budgets)
    print("2/3 planned key steps (exact solver):")
    for k, s in schedules.items():
        print(f"   K={k:>2}  {schedule_strip(s)}  path cost {s.path_cost:.4g}")

    prompt = spec.evaluation_prompts[0]
    print(f"3/3 sampling {prompt!r} at full compute and with DPCache at each budget")

    def sample():
        start = time.perf_counter()
        res = pipe(
            num_inference_steps=T,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            **kwargs(prompt),
        )
        return res.images, time.perf_counter() - start

    ref, ref_s = sample()
    rows = [{"method": "full", "K": T, "seconds": ref_s, "psnr": 100.0}]
    images = [ref[0]]
    for k, s in schedules.items():
        apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, schedule=s.key_steps))
        img, secs = sample()
        hits = sum(r.cache_hits for r in dpcache_stats(pipe).values())
        remove_dpcache(pipe)
        rows.append(
            {"method": "dpcache", "K": k, "seconds": secs, "psnr": _psnr(img, ref), "cache_hits": hits}
        )
        images.append(img[0])
    grid = torch.cat(images, dim=-1).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(
        out / "samples.png"
    )
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{'method':<8} {'K':>3} {'seconds':>8} {'PSNR dB':>8}")
    for r in rows:
        print(f"{r['method']:<8} {r['K']:>3} {r['seconds']:>8.2f} {r['psnr']:>8.2f}")
    print(f"\ncost tensor: {cost_file}\nsamples (full, then K={args.budgets}): {out / 'samples.png'}")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
