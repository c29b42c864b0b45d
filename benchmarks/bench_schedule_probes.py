"""Score DPCache schedule files on held-out probe prompts (neither calibration nor evaluation prompts).

    python benchmarks/bench_schedule_probes.py --model dit-tiny A.json B.json [--num-probes 12] [--cache-dir DIR]

For each schedule file (`dpcache tune --out`, or a `dpcache-tuned` file from the bench cache): the mean PSNR
against the full-step output over the probe prompts (`harness.zoo.registry.probe_prompts`, seeds 5000 + i),
and the per-probe values — how a setting of the search (e.g. `TuneSpace.aligned`) is chosen without the
evaluation prompts.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="schedule files")
    ap.add_argument("--model", required=True)
    ap.add_argument("--num-probes", type=int, default=12)
    ap.add_argument("--cache-dir", default=".dpcache-cache")
    args = ap.parse_args(argv)

    import torch

    from dpcache import DPCacheConfig, apply_dpcache, remove_dpcache
    from harness.metrics import psnr_db
    from harness.runner import BenchSession
    from harness.zoo.registry import get_spec, probe_prompts

    torch.set_num_threads(1)
    session = BenchSession(get_spec(args.model), num_prompts=1, progress=False, cache_dir=args.cache_dir)
    ctx = session.ctx
    probes = probe_prompts(ctx.spec, args.num_probes)
    seeds = [5000 + i for i in range(len(probes))]
    full = [ctx.call(p, s) for p, s in zip(probes, seeds)]
    for path in args.files:
        cfg = DPCacheConfig(num_inference_steps=ctx.num_steps, schedule_file=path, model_id=ctx.spec.name)
        apply_dpcache(ctx.pipe, cfg)
        try:
            values = [float(psnr_db(ctx.call(p, s), ref)) for p, s, ref in zip(probes, seeds, full)]
        finally:
            remove_dpcache(ctx.pipe)
        mean = sum(values) / len(values)
        print(
            f"{path}: {len(values)} probes, mean PSNR {mean:.2f} dB; " + " ".join(f"{v:.1f}" for v in values)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
