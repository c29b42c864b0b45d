"""How much a tiny model's trajectory behaves like its real model's: ``python -m harness.zoo.realism NAME``.

Compares the model's calibrated cost tensor (on its *calibration* prompts) with the authors' released
tensor of its family (FLUX.1-dev for flux-tiny and dit-tiny, Wan2.1-I2V for wan-tiny and
hunyuan-video-tiny, with the released Wan settings first 4 / last 1 full steps). Each tensor is expressed
in units of its own median single-step cost ``C[i-1, i, i+1]`` over the middle steps 10–39, then planned
with the exact solver for K = 9 … 25. Written to ``reports/zoo/realism-NAME.json`` and ``.png``: the
normalised optimal path cost per K, the final segment's share of it, the single-step cost profile over the
50 steps, and the share of a step's transformer FLOPs that a one-block probe costs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from dpcache.atomic_io import write_text_atomic

REPORT_DIR = Path(__file__).resolve().parents[2] / "reports" / "zoo"
FAMILY_TENSOR = {
    "flux": ("flux_dev_T50_cost", 3, 0),
    "dit": ("flux_dev_T50_cost", 3, 0),
    "wan": ("wan21_i2v_T50_cost", 4, 1),
    "hunyuan-video": ("wan21_i2v_T50_cost", 4, 1),
}
BUDGETS = tuple(range(9, 26))
MIDDLE = (10, 40)


def single_step_profile(cost: np.ndarray) -> np.ndarray:
    """``C[i-1, i, i+1]`` for i = 1 … T-2 (the cost of predicting one step from its two predecessors)."""
    t = cost.shape[0]
    return np.array([cost[i - 1, i, i + 1] for i in range(1, t - 1)], dtype=float)


def unit(cost: np.ndarray) -> float:
    """The median single-step cost over the middle steps 10–39."""
    lo, hi = MIDDLE
    return float(np.median([cost[i - 1, i, i + 1] for i in range(lo, hi)]))


def path_summary(cost: np.ndarray, first: int, last: int, budgets=BUDGETS) -> dict[str, Any]:
    """Normalised optimal (exact-solver) path cost per K and the final segment's share of it."""
    from dpcache.planner import plan

    u = unit(cost)
    out: dict[str, Any] = {"unit": u, "budgets": {}}
    for k in budgets:
        s = plan(cost, k, first_full_steps=first, last_full_steps=last, solver="exact")
        keys = list(s.key_steps)
        prev = keys[-2] if len(keys) > 1 else 0
        final = float(cost[prev, keys[-1], cost.shape[0]])
        out["budgets"][str(k)] = {
            "key_steps": keys,
            "path_cost_units": s.path_cost / u,
            "final_segment_units": final / u,
            "final_segment_share": final / s.path_cost if s.path_cost else 0.0,
        }
    return out


def probe_share(pipe, kwargs: dict) -> float:
    """FLOPs of the transformer's first block / FLOPs of one full transformer call (math attention)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    tr = pipe.transformer
    blocks = getattr(tr, "transformer_blocks", None) or tr.blocks
    counts: dict[str, int] = {}

    def counting(name: str, module):
        orig = module.forward

        def fwd(*a, **k):
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
                out = orig(*a, **k)
            counts.setdefault(name, fc.get_total_flops())
            return out

        return orig, fwd

    saved = []
    for name, mod in (("transformer", tr), ("block", blocks[0])):
        orig, fwd = counting(name, mod)
        mod.forward = fwd
        saved.append((mod, orig))
    try:
        with torch.no_grad():
            pipe(**kwargs, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    finally:
        for mod, orig in saved:
            mod.forward = orig
    return counts["block"] / counts["transformer"]


def with_shift(pipe, shift: float) -> None:
    """Swap the pipeline's sampler for the same one with another time shift (UniPC's ``flow_shift``, the flow-match
    Euler's ``shift``; FLUX's dynamic shift is turned off so the given one applies)."""
    cfg = pipe.scheduler.config
    if "flow_shift" in cfg:
        pipe.scheduler = type(pipe.scheduler).from_config(cfg, flow_shift=shift)
    elif "shift" in cfg:
        pipe.scheduler = type(pipe.scheduler).from_config(cfg, shift=shift, use_dynamic_shifting=False)
    else:
        raise ValueError(f"{type(pipe.scheduler).__name__} has no time shift")


def calibrated_tensor(
    name: str, path: str | None = None, prompts: int | None = None, shift: float | None = None
) -> tuple[Any, Any]:
    """(spec, cost array) for a tiny model calibrated on its calibration prompts (order-2 Taylor); ``shift``
    samples with another time shift than the model's own."""
    from dpcache import TaylorPredictor, calibrate
    from harness.zoo import registry

    spec = registry.get_spec(name)
    pipe = registry.load_pipeline(spec, path=path) if path else registry.load_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    if shift is not None:
        with_shift(pipe, shift)
    calib = list(spec.calibration_prompts)[: prompts or None]
    first, last = _released_settings(spec.family)
    ct = calibrate(
        pipe,
        calib,
        num_inference_steps=50,
        predictor=TaylorPredictor(order=2),
        model_id=name,
        prompt_to_kwargs=lambda p: {
            k: v for k, v in spec.pipeline_kwargs(p).items() if k != "num_inference_steps"
        },
        first_full_steps=first,
        last_full_steps=last,
    )
    return spec, pipe, np.asarray(ct.cost)


def _released_settings(family: str) -> tuple[int, int]:
    _, first, last = FAMILY_TENSOR[family]
    return first, last


def released_tensor(family: str) -> np.ndarray:
    """The authors' released tensor of ``family``'s real model (bundled in dpcache/data/official/)."""
    from dpcache.cost_tensor import CostTensor, bundled_tensors

    stem, _, _ = FAMILY_TENSOR[family]
    return np.asarray(CostTensor.load(bundled_tensors()[stem + ".safetensors"]).cost)


def report(
    name: str,
    path: str | None = None,
    prompts: int | None = None,
    out_dir: Path = REPORT_DIR,
    shift: float | None = None,
) -> dict:
    """Measure ``name`` against its family's released tensor; write the JSON and the plot (``realism-NAME``,
    with ``-shiftX`` appended when sampled with another time shift)."""
    spec, pipe, tiny = calibrated_tensor(name, path, prompts, shift)
    first, last = _released_settings(spec.family)
    ref = released_tensor(spec.family)
    kw = {k: v for k, v in spec.pipeline_kwargs(spec.calibration_prompts[0]).items()}
    kw.pop("num_inference_steps", None)
    res = {
        "model": name,
        "weights": path or spec.path,
        "released": FAMILY_TENSOR[spec.family][0],
        "first_full_steps": first,
        "last_full_steps": last,
        "calibration_prompts": len(list(spec.calibration_prompts)[: prompts or None]),
        "time_shift": shift if shift is not None else "the model's own",
        "tiny": path_summary(tiny, first, last),
        "reference": path_summary(ref, first, last),
        "single_step_profile": {
            "tiny": (single_step_profile(tiny) / unit(tiny)).tolist(),
            "reference": (single_step_profile(ref) / unit(ref)).tolist(),
        },
        "probe_share": probe_share(pipe, kw),
    }
    res["ratio_to_reference"] = {
        k: res["tiny"]["budgets"][k]["path_cost_units"] / res["reference"]["budgets"][k]["path_cost_units"]
        for k in res["tiny"]["budgets"]
    }
    res["within_30_percent"] = all(abs(r - 1) <= 0.3 for r in res["ratio_to_reference"].values())
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"realism-{name}" + (f"-shift{shift:g}" if shift is not None else "")
    write_text_atomic(out_dir / f"{stem}.json", json.dumps(res, indent=1) + "\n")
    _plot(res, out_dir / f"{stem}.png")
    return res


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ks = [int(k) for k in res["tiny"]["budgets"]]
    for who, style in (("tiny", "o-"), ("reference", "s--")):
        b = res[who]["budgets"]
        label = res["model"] if who == "tiny" else res["released"]
        ax[0].plot(ks, [b[str(k)]["path_cost_units"] for k in ks], style, label=label)
        ax[1].plot(ks, [b[str(k)]["final_segment_share"] for k in ks], style, label=label)
        prof = res["single_step_profile"][who]
        ax[2].semilogy(range(1, len(prof) + 1), prof, style, ms=3, label=label)
    ax[0].set(xlabel="K", ylabel="optimal path cost (single-step units)", title="path cost")
    ax[1].set(xlabel="K", ylabel="final segment share", title="final segment / path")
    ax[2].set(xlabel="step i", ylabel="C[i-1, i, i+1] / unit", title="single-step cost")
    for a in ax:
        a.legend()
        a.grid(alpha=0.3)
    fig.suptitle(f"{res['model']}: probe share {res['probe_share']:.1%} of a step's transformer FLOPs")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="tiny model name, e.g. flux-tiny")
    ap.add_argument("--path", default=None, help="pipeline directory (default: the committed weights)")
    ap.add_argument("--prompts", type=int, default=None, help="use only the first N calibration prompts")
    ap.add_argument("--out-dir", default=str(REPORT_DIR), help=f"default: {REPORT_DIR}")
    ap.add_argument(
        "--shift", type=float, default=None, help="sample with this time shift instead of the model's own"
    )
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    res = report(args.name, args.path, args.prompts, Path(args.out_dir), args.shift)
    print(
        f"{args.name}: probe share {res['probe_share']:.3f}; K: tiny / released path cost (units), final share"
    )
    for k in ("9", "13", "20", "25"):
        t, r = res["tiny"]["budgets"][k], res["reference"]["budgets"][k]
        print(
            f"  K={k}: {t['path_cost_units']:.0f} / {r['path_cost_units']:.0f}"
            f"  (ratio {res['ratio_to_reference'][k]:.2f}); final {t['final_segment_share']:.2f} / "
            f"{r['final_segment_share']:.2f}"
        )
    print(f"within ±30 % at every K 9..25: {res['within_30_percent']}")


if __name__ == "__main__":
    main()
