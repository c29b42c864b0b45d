"""Released DPCache vs `dpcache-tuned` on held-out probe prompts (neither calibration nor evaluation prompts).

    python benchmarks/bench_tune_holdout.py --model wan-tiny --budgets 13,9 --num-probes 12 [--cache-dir DIR]
        [--tune-prompts N]

`dpcache tune` chooses its settings on the calibration prompts; the suites judge them on the evaluation
prompts. With a few prompts either set can move a method by a dB or more, so this measures the difference on
a third, held-out set (`harness.zoo.registry.probe_prompts`, seeds 5000 + i): mean PSNR of each against the
full-step output, and on how many probes the tuned schedule is better. The tuned schedules come from the
cache directory (computed there on first use, as `dpcache-bench run` does).
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="wan-tiny")
    ap.add_argument("--budgets", default="13,9", help="budgets K, comma-separated")
    ap.add_argument("--num-probes", type=int, default=12)
    ap.add_argument("--cache-dir", default=".dpcache-cache")
    ap.add_argument(
        "--tune-prompts",
        type=int,
        default=None,
        help="calibration prompts the tune scores on (default: TUNE_PROMPTS)",
    )
    args = ap.parse_args(argv)

    import torch

    from harness.metrics import psnr_db
    from harness.runner import BenchSession
    from harness.zoo.registry import get_spec, probe_prompts

    torch.set_num_threads(1)
    if args.tune_prompts is not None:
        from harness import methods_dpcache

        methods_dpcache.TUNE_PROMPTS = args.tune_prompts
    session = BenchSession(get_spec(args.model), num_prompts=1, progress=False, cache_dir=args.cache_dir)
    ctx = session.ctx
    probes = probe_prompts(ctx.spec, args.num_probes)
    seeds = [5000 + i for i in range(len(probes))]
    full = [ctx.call(p, s) for p, s in zip(probes, seeds)]
    for k in (int(b) for b in args.budgets.split(",")):
        scores: dict[str, list[float]] = {}
        for name in ("dpcache", "dpcache-tuned"):
            cfg = session.method(name).configure(ctx, k)
            scores[name] = []
            for p, s, ref in zip(probes, seeds, full):
                cfg.apply()
                try:
                    out = ctx.call(p, s)
                finally:
                    cfg.remove()
                scores[name].append(float(psnr_db(out, ref)))
        released, tuned = scores["dpcache"], scores["dpcache-tuned"]
        n = len(probes)
        better = sum(t > r for r, t in zip(released, tuned))
        print(
            f"{args.model} K={k}: {n} probe prompts, PSNR released {sum(released) / n:.2f} dB, "
            f"tuned {sum(tuned) / n:.2f} dB, tuned better on {better}/{n} "
            f"(tuned on {cfg.knobs.get('tune_prompts', '?')} calibration prompts)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
