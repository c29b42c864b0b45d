"""How hard is a tiny pipeline's trajectory? ``python -m zoo_training.measure NAME [--prompts N]``.

Prints (and writes ``reports/zoo/measure-NAME.json``), for the trained pipeline:
- the per-step relative change ``|o_t - o_{t-1}| / |o_{t-1}|`` of the transformer output along the
  50-step trajectory (mean, percentiles, and early/middle/late thirds);
- PSNR against the 50-step output of (a) plain K-step sampling and (b) 50-step sampling that computes
  only K steps (the first 3, the rest spread uniformly) and reuses the last computed transformer
  output elsewhere (K = 13) — the simplest cache; a trajectory on which (b) does not beat (a) says
  nothing about caches;
- prompt adherence of full-step samples (classifier), parameter count, size on disk, and seconds per
  50-step sample.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from harness.metrics import psnr_db
from harness.zoo import registry


class OutputRecorder:
    """Wraps ``transformer.forward``: records outputs and optionally reuses them at non-key steps.

    Calls are grouped into steps of ``calls_per_step`` (2 for true-CFG pipelines, which call the
    transformer once per branch); each branch keeps its own last computed output.
    """

    def __init__(self, transformer: torch.nn.Module, calls_per_step: int = 1):
        self.transformer = transformer
        self.orig = transformer.forward
        self.calls_per_step = calls_per_step
        self.key_steps: set[int] | None = None
        self.outputs: list[torch.Tensor] = []
        self.calls = 0
        self.computed = 0
        self.last: dict[int, object] = {}
        transformer.forward = self.forward

    def reset(self, key_steps: set[int] | None = None) -> None:
        self.key_steps, self.outputs, self.calls, self.computed, self.last = key_steps, [], 0, 0, {}

    def forward(self, *args, **kwargs):
        step, branch = divmod(self.calls, self.calls_per_step)
        self.calls += 1
        if self.key_steps is not None and step not in self.key_steps and branch in self.last:
            return self.last[branch]
        out = self.orig(*args, **kwargs)
        self.computed += 1
        self.last[branch] = out
        sample = out[0] if isinstance(out, tuple) else out.sample
        if branch == 0:
            self.outputs.append(sample.detach().clone())
        return out

    def remove(self) -> None:
        self.transformer.forward = self.orig


def reuse_schedule(total: int, k: int, first: int = 3) -> list[int]:
    """K key steps out of ``total``: the first ``first`` steps, the rest spread uniformly to the end."""
    rest = np.linspace(first, total - 1, k - first).round().astype(int).tolist()
    return sorted(set(range(first)) | set(rest))


def run_batch(pipe, spec: registry.ModelSpec, prompts: list, steps: int, seed: int) -> np.ndarray:
    """Batched call: one sample per prompt, generator seeded once (deterministic)."""
    kw = spec.pipeline_kwargs(prompts[0], steps)
    if spec.input_kind == "class_label":
        kw["class_labels"] = [spec.pipeline_kwargs(p)["class_labels"][0] for p in prompts]
    else:
        kw["prompt"] = list(prompts)
        if "negative_prompt" in kw:
            kw["negative_prompt"] = [kw["negative_prompt"]] * len(prompts)
    out = pipe(**kw, generator=torch.Generator().manual_seed(seed), output_type="np")
    return np.asarray(out.frames if hasattr(out, "frames") else out.images)


def dir_size_mb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def measure(name: str, n_prompts: int = 64, n_psnr: int = 8, k: int = 13, steps: int | None = None) -> dict:
    spec = registry.get_spec(name)
    steps = steps or spec.num_inference_steps
    pipe = registry.load_pipeline(spec)
    params = {
        n: sum(p.numel() for p in m.parameters())
        for n, m in pipe.components.items()
        if isinstance(m, torch.nn.Module)
    }
    cfg_calls = 2 if spec.pipeline_kwargs("a 0").get("true_cfg_scale", 1) > 1 else 1
    rec = OutputRecorder(pipe.transformer, cfg_calls)
    prompts = list(spec.evaluation_prompts)
    psnr_prompts = prompts[:n_psnr]

    rec.reset()
    full = run_batch(pipe, spec, psnr_prompts, steps, seed=0)
    outs = torch.stack(rec.outputs).flatten(1)
    rel = ((outs[1:] - outs[:-1]).norm(dim=1) / outs[:-1].norm(dim=1)).numpy()
    thirds = np.array_split(rel, 3)

    rec.reset()
    few = run_batch(pipe, spec, psnr_prompts, k, seed=0)
    key = reuse_schedule(steps, k)
    rec.reset(set(key))
    reused = run_batch(pipe, spec, psnr_prompts, steps, seed=0)
    computed_steps = rec.computed // cfg_calls
    rec.reset()
    half = run_batch(pipe, spec, psnr_prompts, steps // 2, seed=0)
    rec.reset(set(range(0, steps, 2)))
    every_other = run_batch(pipe, spec, psnr_prompts, steps, seed=0)
    rec.remove()

    def mean_psnr(x: np.ndarray) -> float:
        return float(np.mean([psnr_db(a, b) for a, b in zip(x, full)]))

    result: dict = {
        "name": name,
        "steps": steps,
        "k": k,
        "reuse_schedule": key,
        "reuse_computed_steps": computed_steps,
        "rel_change": {
            "mean": float(rel.mean()),
            "p10": float(np.percentile(rel, 10)),
            "p50": float(np.percentile(rel, 50)),
            "p90": float(np.percentile(rel, 90)),
            "max": float(rel.max()),
            "early_mean": float(thirds[0].mean()),
            "middle_mean": float(thirds[1].mean()),
            "late_mean": float(thirds[2].mean()),
            "per_step": [round(float(r), 5) for r in rel],
        },
        "psnr_plain_k": mean_psnr(few),
        "psnr_reuse_k": mean_psnr(reused),
        "psnr_plain_half": mean_psnr(half),
        "psnr_reuse_every_other": mean_psnr(every_other),
        "params": params,
        "params_total": int(sum(params.values())),
        "size_mb": dir_size_mb(spec.path) if spec.path else None,
    }
    t0 = time.perf_counter()
    samples = run_batch(pipe, spec, prompts[:n_prompts], steps, seed=1)
    result["batched_seconds"] = time.perf_counter() - t0
    if spec.family in ("flux", "dit"):
        from harness.zoo.classifier import prompt_adherence

        asked = prompts[:n_prompts]
        if spec.input_kind == "class_label":  # class-conditional: only the digit is asked for
            asked = [spec.pipeline_kwargs(p)["class_labels"][0] for p in asked]
        adh = prompt_adherence(samples, asked)
        result["adherence"] = {k2: v for k2, v in adh.items() if k2 != "per_prompt"}
        result["adherence_failures"] = [r for r in adh["per_prompt"] if not r.get("all", r["digit"])][:20]
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        run_batch(pipe, spec, prompts[i : i + 1], steps, seed=i)
        times.append(time.perf_counter() - t0)
    result["seconds_per_sample"] = float(np.median(times))
    result["torch_threads"] = torch.get_num_threads()
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--prompts", type=int, default=64, help="prompts for adherence (≥ 50)")
    ap.add_argument("--psnr-prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=13)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON output (default reports/zoo/measure-NAME.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = measure(args.name, args.prompts, args.psnr_prompts, args.k)
    rc = r["rel_change"]
    print(
        f"{r['name']}: {r['params_total']:,} params ({r['size_mb']:.2f} MB on disk), "
        f"{r['seconds_per_sample']:.2f} s per {r['steps']}-step sample ({r['torch_threads']} thread)"
    )
    print(
        f"relative change per step: mean {rc['mean']:.4f}  p10 {rc['p10']:.4f}  p50 {rc['p50']:.4f}  "
        f"p90 {rc['p90']:.4f}  max {rc['max']:.4f}  (early {rc['early_mean']:.4f} / middle "
        f"{rc['middle_mean']:.4f} / late {rc['late_mean']:.4f})"
    )
    print(
        f"PSNR vs {r['steps']}-step output: plain {r['k']}-step {r['psnr_plain_k']:.2f} dB | reuse at K={r['k']} "
        f"{r['psnr_reuse_k']:.2f} dB (schedule {r['reuse_schedule']})"
    )
    print(
        f"PSNR vs {r['steps']}-step output: plain {r['steps'] // 2}-step {r['psnr_plain_half']:.2f} dB | "
        f"reuse every other step {r['psnr_reuse_every_other']:.2f} dB"
    )
    if "adherence" in r:
        a = r["adherence"]
        fmt = {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in a.items()}
        print(f"prompt adherence over {a['n']} prompts: {fmt}")
    out = (
        Path(args.out)
        if args.out
        else Path(__file__).resolve().parents[1] / "reports" / "zoo" / f"measure-{args.name}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        r["git_sha"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        r["git_sha"] = None
    out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
