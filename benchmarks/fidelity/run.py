"""Run one method's fidelity check: our port vs the authors' code (loaded from --authors-src at run time).

Run: ``python -m benchmarks.fidelity.run teacache --authors-src /path/to/TeaCache [--steps 10] [--prompts 2]``;
`--authors-src` is a checkout or a bare git dir of the authors' repository (nothing of it is copied). Without
it, or with a path that does not exist, the check is skipped and says why. Rows go to
benchmarks/fidelity/results.jsonl (this method's old rows replaced); `make_table` turns them into
reports/competitors.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

METHODS = (
    "teacache",
    "dicache",
    "magcache",
    "taylorseer",
    "toca",
    "delta_dit",
    "teacache_wan",
    "easycache",
    "dicache_wan",
    "taylorseer_wan",
    "magcache_wan",
    "fora_wan",
    "taylorseer_dit",
    "toca_dit",
    "fora_dit",
    "teacache_hunyuan",
    "easycache_hunyuan",
    "dicache_hunyuan",
    "magcache_hunyuan",
    "taylorseer_hunyuan",
    "fora_hunyuan",
    "firstblockcache",
)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", choices=METHODS)
    ap.add_argument("--authors-src", default=None, help="the authors' repository (checkout or git dir)")
    ap.add_argument("--model", action="append", default=None, help="tiny model(s); default: the adapter's")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=2, help="evaluation prompts (seeds 0, 1, ...)")
    ap.add_argument("--values", default=None, help="knob values, comma-separated; default: the adapter's")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)

    import torch

    from .common import AuthorsSourceMissing, authors_source, load_model, write_results

    torch.set_num_threads(1)
    adapter = importlib.import_module(f"benchmarks.fidelity.{args.method}")
    try:
        src = authors_source(args.authors_src, adapter.REPO)
    except AuthorsSourceMissing as e:
        print(f"skipped {args.method}: {e}")
        return 0
    values = [float(v) for v in args.values.split(",")] if args.values else list(adapter.VALUES)
    rows = []
    for name in args.model or adapter.MODELS:
        model = load_model(name)
        prompts = list(model.spec.evaluation_prompts[: args.prompts])
        try:
            out = adapter.compare(src, model, args.steps, values, prompts, list(range(len(prompts))))
        except AuthorsSourceMissing as e:
            print(f"skipped {args.method} on {name}: {e}")
            continue
        for row in out:
            print(row.line(), flush=True)
        rows += out
    if rows and not args.no_write:
        write_results(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
