"""Turning one sampled configuration into a `ResultRecord`: prompt adherence, timing samples, the compute
measured on the evaluation prompts (matched or not), saturation caveats and the cache sanity check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.metrics import MetricResult, Unavailable
from harness.records import ResultRecord, Timing, compute_matched

NOT_TIMED = "wall-clock not timed (repeats = 0: no timed runs; FLOPs speedup is exact)"
# the methods' own search knob holding the compute measured on the *calibration* prompts (methods.py)
CALIBRATION_KNOB = "measured_K"


def cache_check(record: ResultRecord) -> str | None:
    """Why a cache method's record is invalid, or None: no cache hit although K < T, or — for a fixed
    schedule (DPCache: `key_steps` knob), whose compute cannot depend on the prompt — measured compute off K
    by more than 5 %. A threshold method off K on the evaluation prompts is a property of the method, not a
    bug: its record is marked UNMATCHED (terminal, summary, MLflow, reports) and never ranked at K."""
    i = record.identity
    if i.method in ("full", "fewer-steps") or i.budget is None or i.budget >= i.num_steps or not record.ran:
        return None
    if sum(record.speed.cache_hits) <= 0:
        return f"{record.test_id}: no cache hits at K={i.budget} < T={i.num_steps}: the cache never engaged"
    if record.unmatched and "key_steps" in i.knobs:
        return (
            f"{record.test_id}: UNMATCHED compute: measured K={record.speed.measured_k:.2f} on the evaluation "
            f"prompts is off the budget K={i.budget} by more than 5%: not at matched compute"
        )
    return None


def compute_floor(match: Any) -> float | None:
    """The least compute (in K) a knob search saw the method reach, from its `BudgetMatch` (None if unknown)."""
    evals = getattr(match, "evaluations", None) or []
    measured = [float(m) for _, m in evals if m is not None]
    return min(measured) if measured else None


def saturation_caveat(method: str, budget: int | None, match: Any, num_steps: int) -> str | None:
    """A caveat when K sits on the method's compute floor: its knob is saturated (e.g. FirstBlockCache at
    K=13 where only block 0 runs after step 0), so the point shows the method's limit, not a tuned setting."""
    floor = compute_floor(match)
    measured = getattr(match, "measured", None)
    if floor is None or measured is None or budget is None or budget >= num_steps:
        return None
    if measured <= floor * 1.01:
        return (
            f"{method} K={budget}: saturated: K is the least compute its knob reaches (measured K={measured:.2f} "
            f"on the calibration prompts, floor {floor:.2f}): every step it can skip is skipped and only its probe "
            "(e.g. the first block) still runs"
        )
    return None


def adherence(spec: Any, images: Any, prompts: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
    """Prompt adherence by the zoo's checks: per prompt, the fraction of the attributes it names (digit,
    colour, background; for video digit, colour, direction of motion) that the output shows; plus each
    attribute's and the all-three fraction as extras."""
    if spec.scale != "tiny":
        why = "the zoo's prompt-adherence checks read the tiny digit-scene models only"
        return Unavailable(why, "adherence"), {}
    video = images.dim() == 5
    try:
        if video:  # digit / colour / direction of motion, read by the zoo's video checks
            from harness.zoo.classifier import video_adherence

            res = video_adherence(list(images), [str(p) for p in prompts])
        else:
            from harness.zoo.classifier import prompt_adherence

            if spec.input_kind == "class_label":  # DiT is asked for the digit only: colour is its own choice
                prompts = [int(spec.pipeline_kwargs(p)["class_labels"][0]) for p in prompts]
            res = prompt_adherence(images, list(prompts))
    except FileNotFoundError as e:
        return Unavailable(str(e), "adherence"), {}
    attrs = ("digit", "colour", "direction") if video else ("digit", "colour", "background")
    per = [
        sum(float(r[a]) for a in attrs if a in r) / sum(1 for a in attrs if a in r) for r in res["per_prompt"]
    ]
    extras = {f"adherence_{k}": float(res[k]) for k in (*attrs, "all") if res.get(k) is not None}
    return MetricResult(
        "adherence", sum(per) / len(per), tuple(per), {"criterion": "attribute fraction"}
    ), extras


def prompt_metrics(spec: Any, images: Any, prompts: Sequence[Any]) -> dict[str, Any]:
    """adherence, clip_score, image_reward (images) or vbench (videos), each a value or Unavailable, and
    `extra_metrics`."""
    from harness import metrics

    adh, extras = adherence(spec, images, prompts)
    out: dict[str, Any] = {"adherence": adh, "extra_metrics": extras}
    text = all(isinstance(p, str) for p in prompts)
    full = spec.scale == "full"
    tiny_why = "at full scale only (tiny models draw digit scenes; adherence is the zoo classifier)"
    if images.dim() == 5:  # video: VBench, the metric the video papers report
        ok = text and full
        out["vbench"] = metrics.vbench(images, list(prompts)) if ok else Unavailable(tiny_why, "vbench")
        return out
    if text and full:
        out["clip_score"] = metrics.clip_score(images, list(prompts))
        out["image_reward"] = metrics.image_reward(images, list(prompts))
    else:
        why = "text-to-image " + tiny_why
        out["clip_score"] = Unavailable(why, "clip_score")
        out["image_reward"] = Unavailable(why, "image_reward")
    return out


def timing_part(full: dict[str, Any], mine: dict[str, Any], sp: Any, repeats: int, warmup: int) -> Timing:
    """Per-repeat samples and medians, or only `repeats = 0` when untimed."""
    mem = sp.mem_overhead_bytes if isinstance(sp.mem_overhead_bytes, int) else None
    if not repeats:
        return Timing(mem_overhead_bytes=mem)
    return Timing(
        repeats=repeats,
        warmup=warmup,
        timer=mine["timing"].timer,
        full_s=list(full["timing"].samples),
        method_s=list(mine["timing"].samples),
        wall_speedup=list(sp.wall_speedup_samples),
        pipeline_s=mine["timing"].median,
        pipeline_iqr_s=mine["timing"].iqr,
        transformer_s=mine["transformer_s"],
        full_pipeline_s=full["timing"].median,
        full_transformer_s=full["transformer_s"],
        mem_overhead_bytes=mem,
    )


def record_knobs(knobs: dict[str, Any]) -> dict[str, Any]:
    """The configuration's knobs, the search's calibration-prompt compute renamed so no name says `measured K`
    for two things: `calibration_measured_K` (knob search) vs the record's `speed.measured_k` (evaluation)."""
    return {("calibration_measured_K" if k == CALIBRATION_KNOB else k): v for k, v in knobs.items()}


def not_run_record(
    session: Any, method: str, budget: int | None, reason: str, floor: float | None
) -> ResultRecord:
    """A record of a configuration that was asked for and did not run (reason, measured compute floor)."""
    from harness.provenance import device_class

    rec = ResultRecord.create(
        suite=session.suite,
        model=session.spec.name,
        scale=session.spec.scale,
        method=method,
        budget=budget,
        num_steps=session.ctx.num_steps,
        num_prompts=len(session.prompts),
        config_tag=session.tag(method, budget),
        device_class=device_class(session.ctx.device),
        prompts=[str(p) for p in session.prompts],
        device=session.ctx.device,
    )
    rec.outcome.status, rec.outcome.reason = "not_run", reason
    rec.speed.compute_floor_k = floor
    return rec


def matched(measured_k: float, budget: int | None, num_steps: int, method: str) -> bool | None:
    if method == "full" or budget is None or budget >= num_steps:
        return None
    return compute_matched(measured_k, budget)


def save_images(folder: Any, images: Any) -> None:
    """`promptNN.png` per prompt; video: a strip of up to five evenly spaced frames (`promptNN_fMM.png`)."""
    from pathlib import Path

    from PIL import Image

    from harness.context import to_uint8_images

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    if images.dim() == 5:
        f = images.shape[1]
        for j in sorted({round(x * (f - 1) / 4) for x in range(5)}):
            for i, arr in enumerate(to_uint8_images(images[:, j])):
                Image.fromarray(arr).save(d / f"prompt{i:02d}_f{j:02d}.png")
        return
    for i, arr in enumerate(to_uint8_images(images)):
        Image.fromarray(arr).save(d / f"prompt{i:02d}.png")
