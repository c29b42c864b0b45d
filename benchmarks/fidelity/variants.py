"""Two versions of a port side by side at fixed knobs in one process (flux-tiny, T = 50): PSNR vs full + compute.

Run: ``python -m benchmarks.fidelity.variants --old-tree /path/with/old/baselines --out effects.jsonl``. The
"before" side imports `baselines` from `--old-tree` (a `git archive` of the commit before the fix), the "after"
side from this tree; a design choice (OmniCache's EMA, Δ-DiT's stage switch) is compared by a config field.
Cheaper than `effect.py` (no knob search): the knob values are the ones that put each version near K = 13 / 9;
each row records the compute it measured, so the comparison is at nearly (not exactly) matched compute.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

# (method, label, tree, knob values, config overrides {module:Class: {field: value}})
RUNS = [
    ("toca", "before", "old", (6, 18), {}),
    ("toca", "after", "new", (7, 24), {}),
    ("taylorseer", "before", "old", (5, 10), {}),
    ("taylorseer", "after", "new", (5, 10), {}),
    ("omnicache", "ema0.7", "new", (0.26, 0.18), {}),
    ("omnicache", "ema-off", "new", (0.26, 0.18), {"omnicache:OmniCacheConfig": {"filter_weight": 1.0}}),
    ("delta-dit", "switch", "new", (3, 50), {}),
    ("delta-dit", "no-switch", "new", (3, 50), {"delta_dit:DeltaDiTConfig": {"stage_switch": False}}),
]


def _use_tree(root: str) -> None:
    """Import `baselines` from `root` from now on (drops the loaded one)."""
    for name in [n for n in sys.modules if n == "baselines" or n.startswith("baselines.")]:
        del sys.modules[name]
    sys.path.insert(0, root)
    importlib.invalidate_caches()


def _override(overrides: dict) -> None:
    for target, fields in overrides.items():
        module, cls_name = target.split(":")
        cls = getattr(importlib.import_module(f"baselines.{module}"), cls_name)
        init = cls.__init__

        def patched(self, *args, _init=init, _fields=fields, **kwargs):
            _init(self, *args, **kwargs)
            for k, v in _fields.items():
                setattr(self, k, v)

        cls.__init__ = patched


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-tree", required=True, help="directory holding the old baselines/ package")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--methods", default=None, help="only these methods (comma-separated)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from harness.context import ModelContext, pipeline_weights_hash

    from .common import load_model, psnr

    torch.set_num_threads(1)
    new_tree = str(Path(__file__).resolve().parents[2])
    model = load_model("flux-tiny")
    spec, steps = model.spec, args.steps
    ctx = ModelContext(
        spec,
        model.pipe,
        steps,
        tuple(spec.calibration_prompts[:2]),
        tuple(spec.evaluation_prompts[: args.prompts]),
        pipeline_weights_hash(model.pipe, spec.path),
        Path(tempfile.mkdtemp(prefix="fid-variants-")),
        progress=False,
    )
    ctx.search_prompts = 1
    prompts = list(ctx.evaluation_prompts)
    refs = [model.sample(p, 100 + i, steps) for i, p in enumerate(prompts)]
    wanted = set(args.methods.split(",")) if args.methods else None
    for method_name, label, tree, knobs, overrides in RUNS:
        if wanted and method_name not in wanted:
            continue
        _use_tree(args.old_tree if tree == "old" else new_tree)
        _override(overrides)
        from baselines.base import get_method
        from harness.methods import BaselineMethod

        m = get_method(method_name)
        artifacts = BaselineMethod(m).artifacts(ctx)
        for value in knobs:
            measured = ctx.search_compute(
                lambda v=value, m=m, a=artifacts: m.apply(model.pipe, v, steps, a),
                lambda m=m: m.remove(model.pipe),
            )
            m.apply(model.pipe, value, steps, artifacts)
            try:
                outs = [model.sample(p, 100 + i, steps) for i, p in enumerate(prompts)]
            finally:
                m.remove(model.pipe)
            values = [psnr(o, r) for o, r in zip(outs, refs, strict=True)]
            row = {"method": method_name, "label": label, "model": "flux-tiny", "T": steps, "knob": value}
            row |= {"measured_K": round(measured, 3), "psnr": values, "psnr_mean": sum(values) / len(values)}
            row |= {"code": str(Path(sys.modules["baselines"].__file__).parent), "overrides": overrides}
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
