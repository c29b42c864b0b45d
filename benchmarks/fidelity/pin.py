"""Pin every baseline port's output on a tiny model (tests/data/baselines_pinned.json; tests/test_baselines_pinned.py).

Run after any deliberate change to a port or to the tiny models' weights: ``python -m benchmarks.fidelity.pin``
(a minute on one core). Each method runs at T = 10 with a fixed skipping knob on one evaluation prompt (seed 0);
what is pinned: the computed steps of each CFG branch, the image's mean / std and an 4×4 average-pooled
thumbnail (rounded), and the weights hash of each model (a retrained model must be re-pinned).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

PINNED = Path(__file__).resolve().parents[2] / "tests" / "data" / "baselines_pinned.json"
T = 10
# method -> (tiny model, knob value that skips at T = 10)
PINS: dict[str, tuple[str, float]] = {
    "teacache": ("flux-tiny", 1.0),
    "dicache": ("flux-tiny", 0.4),
    "magcache": ("flux-tiny", 0.24),
    "fora": ("flux-tiny", 3),
    "toca": ("flux-tiny", 3),
    "delta-dit": ("flux-tiny", 3),
    "taylorseer": ("flux-tiny", 3),
    "omnicache": ("flux-tiny", 0.5),
    "firstblockcache": ("flux-tiny", 0.2),
    "pab": ("flux-tiny", 3),
    "fastercache": ("flux-tiny", 3),
    "seacache": ("flux-tiny", 0.2),
    "dbcache": ("flux-tiny", 0.2),
    "easycache": ("wan-tiny", 0.5),
}
_MODELS: dict[str, Any] = {}


def model(name: str):
    """A tiny model, loaded once per process."""
    from .common import load_model

    if name not in _MODELS:
        _MODELS[name] = load_model(name)
    return _MODELS[name]


def weights_hash(name: str) -> str:
    from harness.context import pipeline_weights_hash

    m = model(name)
    return pipeline_weights_hash(m.pipe, m.spec.path)


def pinned_run(method_name: str) -> dict[str, Any]:
    """Run one method as pinned and return what is pinned (no artifacts except MagCache's ratios, which are
    calibrated at T on the first calibration prompt: TeaCache runs its identity polynomial, OmniCache uniform)."""
    import torch

    from baselines.base import get_method

    from .common import traced

    name, knob = PINS[method_name]
    m = model(name)
    method = get_method(method_name)
    artifacts = None
    if method_name == "magcache":
        from baselines.magcache import calibrate_magcache

        cal = m.spec.calibration_prompts[0]
        artifacts = calibrate_magcache(m.pipe, T, lambda: m.sample(cal, 42, T))
    prompt = m.spec.evaluation_prompts[0]

    def run() -> torch.Tensor:
        method.apply(m.pipe, knob, T, artifacts)
        try:
            return m.sample(prompt, 0, T)
        finally:
            method.remove(m.pipe)

    out, trace = traced(m, run)
    frames = out.reshape(-1, *out.shape[-3:]).double()  # (N·F, C, H, W)
    thumb = torch.nn.functional.adaptive_avg_pool2d(frames.mean(0, keepdim=True), 4)[0]
    return {
        "model": name,
        "knob": knob,
        "T": T,
        "steps": [trace.steps(m.branches, b) for b in range(m.branches)],
        "mean": round(float(frames.mean()), 6),
        "std": round(float(frames.std()), 6),
        "thumb": [round(float(v), 5) for v in thumb.flatten()],
    }


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(PINNED))
    ap.add_argument("--methods", default=",".join(PINS))
    args = ap.parse_args(argv)

    import torch

    from baselines.base import load_all

    torch.set_num_threads(1)
    registered = load_all()
    path = Path(args.out)
    data = json.loads(path.read_text()) if path.is_file() else {"methods": {}}
    data["regenerate"] = "python -m benchmarks.fidelity.pin"
    data["T"] = T
    data.setdefault("weights", {})
    for name in args.methods.split(","):
        if name not in registered:
            print(f"{name}: not registered here (optional dependency missing?), not pinned")
            continue
        row = pinned_run(name)
        data["weights"][row["model"]] = weights_hash(row["model"])
        data["methods"][name] = row
        print(f"{name:<16} {row['model']:<10} steps {row['steps']} mean {row['mean']}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
