"""How well TeaCache's fitted rescale polynomial predicts the output change on a tiny model (R², relative error).

Run: ``python -m benchmarks.fidelity.teacache_fit wan-tiny [--steps 50] [--prompts 2]``; appends one JSON line to
benchmarks/fidelity/teacache_fit.jsonl. The fit is `calibrate_teacache`'s (the authors' recipe: np.polyfit of the
stack output's rel-L1 change on the indicator's, degree 4, over every (step, branch) pair of full-compute runs of
the calibration prompts); R² and the mean relative error are over those same points.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).with_name("teacache_fit.jsonl")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--prompts", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from baselines.base import Calibration
    from baselines.teacache import calibrate_teacache

    from .common import load_model

    torch.set_num_threads(1)
    m = load_model(args.model)
    prompts = m.spec.calibration_prompts[: args.prompts]

    def run() -> None:
        for i, p in enumerate(prompts):
            m.sample(p, 42 + i, args.steps)

    a = calibrate_teacache(m.pipe, Calibration(args.model, args.steps, run, Path(tempfile.mkdtemp())))
    keep = ("model", "num_steps", "points", "coefficients", "r2", "mean_abs_rel_error", "indicator")
    row = {k: a[k] for k in keep}
    print(json.dumps(row))
    with OUT.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
