"""Generate reports/competitors.md: each ported competitor against its authors' code (from the fidelity runs).

Run: ``python -m benchmarks.fidelity.make_table`` after `benchmarks.fidelity.run` (results.jsonl) and
`benchmarks.fidelity.variants` (effects.jsonl: the before / after and design-choice figures).
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
OUT = HERE.parents[1] / "reports" / "competitors.md"

# method -> (source, how it was checked, deliberate differences); "run" rows come from results.jsonl
INFO: dict[str, tuple[str, str, str]] = {
    "teacache": (
        "ali-vilab/TeaCache",
        "run: TeaCache4FLUX forward; TeaCache4Wan2.1 forward (`--use_ret_steps`) on the official WanModel (wan_official.py); TeaCache4HunyuanVideo forward on the official HunyuanVideo model (hunyuan_official.py; their published polynomial on both sides, state per CFG branch)",
        "tiny models' rescale polynomials fitted by `calibrate_teacache` (authors' recipe; no published ones); batch handled per row. Earlier fix (Wan): e0 indicator + 5 retention steps; HunyuanVideo: state per CFG branch — their forward decides once on the official pipeline's batched [uncond, cond] call, not available with diffusers' two calls (measured: PSNR ours vs theirs ≥ 16.9 dB)",
    ),
    "dicache": (
        "Bujiazi/DiCache",
        "run: FLUX/run_flux_dicache.py forward; its WAN2.1 forward on its WanModel; its HunyuanVideo forward on its hyvideo copy (state per CFG branch)",
        "none (rounding; γ extrapolation lifts the 2e-6 model floor to 2.5e-5 on Wan); warm-up counted in steps vs their calls (differs only when int(0.4T) is odd); HunyuanVideo: state per CFG branch vs their batched-CFG decision (measured: PSNR ≥ 18.3 dB)",
    ),
    "magcache": (
        "Zehong-Ma/MagCache",
        "run: MagCache4FLUX forward (same ratios); MagCache4Wan2.1 forward on the official WanModel (same ratios, and its own per-branch calibration); MagCache4HunyuanVideo forward on the official HunyuanVideo model (K 6, R 0.2, same ratios; per-branch and batched CFG)",
        "diffusers' hook does not force the 11th of 28 steps that the authors' FLUX.1-dev script forces (a FLUX.1-dev trajectory fix; step 20 at T = 50); ratios from diffusers' calibration (vs the authors' calibration forward: max ratio difference in the extra column of results.jsonl); Wan: one ratio list for both CFG branches (diffusers' hook; the branches' mean) where the authors' script keeps one per branch. Fixed (Wan): K/R were diffusers' 3/0.2, now the authors' T2V-1.3B 4/0.2",
    ),
    "taylorseer": (
        "Shenyi-Z/TaylorSeer",
        "run: TaylorSeers-Diffusers FLUX forwards, O = 2; TaylorSeer-Wan2.1 forwards on their WanModel; TaylorSeer-DiT forwards on their DiT class with dit-tiny's weights (dit_official.py); TaylorSeer-HunyuanVideo model (their cached HYVideoDiffusionTransformer)",
        "none since the fixes (FLUX: the authors' `cal_type` step rule; their released per-model settings, were the FLUX settings O = 2, first 3: Wan and HunyuanVideo O = 1, first_enhance 1; DiT O = 4, first_enhance 2)",
    ),
    "fora": (
        "Shenyi-Z/TaylorSeer",
        "run: same forwards, order 0, FORA warm-up (step 0); TaylorSeer-Wan2.1 forwards at order 0, first_enhance 1 on their WanModel (its FORA mode has no Wan block forward); DiT: TaylorSeer-DiT's Taylor path at order 0, first_enhance 1 (the codebase has no DiT FORA mode); TaylorSeer-HunyuanVideo in its FORA mode ('original')",
        "none; FORA's warm-up is 1 step in the codebase (`cal_type`: 'FORA: Uniform', step == 0)",
    ),
    "toca": (
        "Shenyi-Z/TaylorSeer @ 288776d (FLUX); Shenyi-Z/ToCa @ e84096f (DiT-ToCa)",
        "run: its BFL `flux` model in 'ToCa' mode, driven by our pipeline (bfl_flux.py); DiT: DiT-ToCa's own code (README DDIM-50 settings) on their DiT class (dit_official.py); ours with rule='dit' = it",
        "none on FLUX (earlier fix: attention-map score, 'ToCa' fresh-ratio schedule); Wan stream factor 1 (not in their code); DiT: the registered port keeps the re-implementation's rule (vs DiT-ToCa up to 4.9e-1); DiT-ToCa's rule is ToCaConfig(rule='dit'), worse on dit-tiny (K = 13: 16.6 vs 22.0 dB); no Wan check: Shenyi-Z/ToCa has no Wan code and TaylorSeer-Wan2.1's block forward rejects the ToCa step type; no HunyuanVideo check: their ToCa mode picks tokens at random",
    ),
    "delta-dit": (
        "Shenyi-Z/TaylorSeer (re-impl.; paper code unreleased)",
        "run: its BFL `flux` 'Delta' mode via bfl_flux.py; ours with `stage_switch=False, reimpl_reuse_steps=True` = it",
        "the paper's stage switch (boundary T/2, our choice) and no reuse steps (the re-implementation makes every 2nd cached step a FORA step, not in the paper) by default: our defaults vs theirs up to 4.9e-1",
    ),
    "easycache": (
        "H-EmbodVis/EasyCache",
        "run: EasyCache4Wan2.1 forward on the official WanModel; EasyCache4HunyuanVideo forward on the official HunyuanVideo model, without CFG (their one call per step)",
        "warm-up scaled from 10/50 to T; per-row state. Fixed: each CFG branch decided on its own, now the conditional branch decides for both; HunyuanVideo with true CFG: the conditional branch decides (their Wan rule) vs their batched-CFG pooled decision (theirs computes more steps; PSNR 37–52 dB at τ 0.025–0.1)",
    ),
    "dbcache": (
        "vipshop/cache-dit",
        "is the authors' package (pip cache-dit)",
        "none (their code runs)",
    ),
    "omnicache": (
        "no public code (arXiv 2508.16212)",
        "re-implementation",
        "all of it is our reading; the EMA 'noise filter' (0.7) measured and turned off (ema-off = the default now)",
    ),
    "firstblockcache": (
        "chengzeyi/ParaAttention (via diffusers' hook)",
        "run: para_attn/first_block_cache utils.py + diffusers_adapters/flux.py, wan.py from the fetched source on our diffusers transformer, cache context per sample, with their enable_alter_cache True (per-branch state) and False (shared)",
        "none vs their per-branch state (enable_alter_cache=True, their wan default); their flux default shares one state between the cond and uncond calls (written for guidance-distilled FLUX.1-dev): at flux-tiny's least compute (threshold 1e3: only step 0 computes its tail; T = 50, 4 prompts) ours 14.75 dB vs their shared default 16.37 dB (which also skips step 0's uncond tail; effects_fbcache.jsonl); hunyuan_video adapter not run (older diffusers forward, needs para_attn's attention kernels)",
    ),
    "pab": (
        "NUS-HPC-AI-Lab/VideoSys @ 4cce477 (via diffusers' hook)",
        "not run: PAB lives in VideoSys' own transformers (CogVideoX, Latte, Open-Sora, Open-Sora-Plan, Vchitect), no Flux/Wan/HunyuanVideo/DiT; read core/pab/pab_mgr.py: same broadcast rule (count % range != 0 inside the timestep window) as diffusers' hook",
        "pyramid N/2N/3N in diffusers' window (100, 800) as the budget knob vs their per-model ranges and windows (Latte 2/3/6 in (100, 800), Open-Sora 2/4/6 in (450, 930)); their MLP broadcast not in diffusers; state per CFG branch (they batch CFG)",
    ),
    "fastercache": (
        "Vchitect/FasterCache @ 02d05ef (via diffusers' hook)",
        "not run: its scripts patch its own model classes only (Open-Sora STDiT3, Open-Sora-Plan, Latte, CogVideoX SAT, Vchitect-XL, Mochi); no diffusers script, no Flux/Wan/HunyuanVideo/DiT",
        "diffusers' schedule (every N-th call inside (-1, 681), constant w = 0.5) vs theirs per script (Open-Sora: even steps after step 7, w = 0.9·(step-7)/20); CFG cache off (needs batched [uncond, cond] CFG; ours runs CFG as two calls)",
    ),
    "seacache": (
        "jiwoogit/SeaCache (HEAD 802d7cd README only; scripts at 0a91c2b) via diffusers' hook",
        "not run: the SEA filter module util_seacache.py that their Wan2.1/HunyuanVideo scripts import is in no stored version; their scripts patch the original Wan2.1/HunyuanVideo repositories, not diffusers",
        "indicator: diffusers filters the noisy input latent, theirs Wan block 0's modulated input; residual order 1 (diffusers) vs 0; diffusers caps 2 consecutive reuses, theirs none; default threshold 0.25 vs 0.2",
    ),
}


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _fmt_db(v: float | None) -> str:
    return "∞" if v is None or (isinstance(v, float) and math.isinf(v)) else f"{v:.1f} dB"


def _effect_row(e: dict) -> dict:
    """One effects row in one shape (effects.jsonl: flux-tiny, flat; effects_wan.jsonl: the knob in `knobs`)."""
    knobs = dict(e.get("knobs") or {})
    measured = e.get("measured_K", knobs.pop("measured_K", math.nan))
    knob = e.get("knob", next(iter(knobs.values()), math.nan))
    model = e.get("model", "flux-tiny")
    label = e["label"] if model == "flux-tiny" else f"{e['label']} ({model})"
    return {**e, "label": label, "measured_K": float(measured), "knob": float(knob)}


def _deliberate(row: dict) -> bool:
    """A row that compares against a side we differ from on purpose (its reason in `extra.deliberate`)."""
    return bool(row.get("extra", {}).get("deliberate"))


def _effect(method: str, effects: list[dict], results: list[dict]) -> str:
    """The K ≈ 13 / 9 figures of this method's variants (before → after a fix, or a design choice), PSNR against
    the full-compute output with the compute each measured; and ours vs theirs at T = 50 where it was run."""
    mine = [_effect_row(e) for e in effects if e["method"] == method and e.get("psnr_mean") is not None]
    order = {"before": 0, "after": 1}
    labels = sorted({e["label"] for e in mine}, key=lambda x: (order.get(x.split(" ")[0], 2), x))
    parts = []
    for label in labels:
        rows = sorted((e for e in mine if e["label"] == label), key=lambda e: -e["measured_K"])
        txt = ", ".join(
            dict.fromkeys(
                f"{e['psnr_mean']:.2f} dB at K = {e['measured_K']:.1f} (knob {e['knob']:g})" for e in rows
            )
        )
        parts.append(f"{label}: {txt}")
    kept = [r for r in results if r["method"] == method and _deliberate(r) and r["num_steps"] >= 50]
    for model, why in dict.fromkeys((r["model"], r["extra"]["deliberate"]) for r in kept):
        group = [r for r in kept if (r["model"], r["extra"]["deliberate"]) == (model, why)]
        w = min(group, key=lambda r: math.inf if r["psnr_db"] is None else r["psnr_db"])
        parts.append(
            f"ours vs theirs on {model} at T = 50 ({why}), {w['knob']} = {w['value']:g}: {_fmt_db(w['psnr_db'])}"
        )
    return "; ".join(parts) or "-"


def table(results: list[dict], effects: list[dict]) -> str:
    by = defaultdict(list)
    for r in results:
        by[r["method"]].append(r)
    lines = [
        "# Competitors against their authors' code",
        "",
        "Generated by `python -m benchmarks.fidelity.make_table` from `benchmarks/fidelity/results.jsonl` (ours vs",
        "the authors' code, loaded at run time from a fetched copy: `python -m benchmarks.fidelity.run <method>",
        "--authors-src <repo>`) and `benchmarks/fidelity/effects.jsonl` (`benchmarks.fidelity.variants`: PSNR against",
        "the 50-step full-compute output on flux-tiny, 1 evaluation prompt, at knobs near K = 13 / 9). Images and",
        "frames in [0, 1]; `max |ours − theirs|` is over every compared (model, T, knob, prompt) with the same knob,",
        "prompt and seed, excluding the runs against a side we differ from on purpose (their figures are in the",
        "last column); computed steps: the steps whose last block ran, per CFG branch, ours == theirs (runs agreeing",
        "/ runs). Models are listed with the step counts they were checked at. Nothing of the authors'",
        "code is in this repository. OmniCache is shown as `omnicache (re-impl.)` in every table.",
        "",
        "| method | source (repo @ commit) | checked how | models | max \\|ours − theirs\\| | computed steps "
        "agree | deliberate differences | effect at K = 13 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, (source, how, diffs) in INFO.items():
        rows = [r for r in by.get(method, []) if not _deliberate(r)]
        name = "omnicache (re-impl.)" if method == "omnicache" else method
        if rows:
            commit = rows[0]["commit"][:7]
            steps = defaultdict(set)
            for r in rows:
                steps[r["model"]].add(r["num_steps"])
            models = ", ".join(f"{m} (T = {'/'.join(map(str, sorted(t)))})" for m, t in sorted(steps.items()))
            worst = max(r["max_abs"] for r in rows)
            agree = sum(r["steps_equal"] for r in rows)
            cells = [
                source if "@" in source else f"{source} @ {commit}",
                how,
                models,
                f"{worst:.1e}",
                f"{agree}/{len(rows)}",
            ]
        else:
            cells = [source, how, "-", "not run", "-"]
        lines.append(
            f"| {name} | " + " | ".join([*cells, diffs, _effect(method, effects, by.get(method, []))]) + " |"
        )
    return "\n".join(lines) + "\n"


def fits(rows: list[dict]) -> str:
    """TeaCache's fitted polynomials (benchmarks.fidelity.teacache_fit): how well they predict the output change."""
    if not rows:
        return ""
    lines = [
        "",
        "TeaCache's rescale polynomials on the tiny models are fitted by `calibrate_teacache` with the authors' recipe",
        "(np.polyfit, degree 4, of the stack output's rel-L1 change on the indicator's, over every (step, branch)",
        "pair of full-compute runs of the calibration prompts; `python -m benchmarks.fidelity.teacache_fit <model>`):",
        "",
        "| model | T | points | indicator | R² | mean relative error |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ind = "e0 (timestep projection)" if r["model"].startswith("wan") else "block-0 modulated input"
        lines.append(
            f"| {r['model']} | {r['num_steps']} | {r['points']} | {ind} | {r['r2']:.2f} | {r['mean_abs_rel_error']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    effects = [e for name in ("", "_wan", "_dit", "_hunyuan") for e in _rows(HERE / f"effects{name}.jsonl")]
    text = table(_rows(HERE / "results.jsonl"), effects)
    text += fits(_rows(HERE / "teacache_fit.jsonl"))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
