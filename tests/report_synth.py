"""A synthetic benchmark run for the report tests: JSON lines + tiny PNGs in the runner's layout, no model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

INVOCATION = "20260102T030405-abcdef12"
T = 20
PROMPTS = ["a red 0 on a blue background", "a green 1 on a black background", "a white 2 on a red background"]
COLOURS = [(220, 40, 40), (40, 180, 60), (240, 240, 240)]
BACKGROUNDS = [(30, 60, 230), (10, 10, 10), (230, 30, 30)]
LPIPS_WHY = "torchvision is not installed (LPIPS needs the torchvision AlexNet backbone)"
PSNR_WHY = "reference missing for this config"


def _schedule(k: int) -> list[int]:
    return sorted({0, 1, *(round(i * (T - 1) / (k - 1)) for i in range(k))})[:k] if k > 1 else [0]


def record(
    model: str, method: str, budget: int, psnr: float | None, speed: float, **extra: Any
) -> dict[str, Any]:
    """One JSON-lines record like the runner writes (only the fields the report reads)."""
    tag = f"{method}-K{budget}" + ("-M3-O2" if method == "dpcache" else "")
    full = method == "full"
    unavailable = {"lpips": LPIPS_WHY}
    if psnr is None:
        unavailable["psnr"] = PSNR_WHY
    rec = {
        "invocation": INVOCATION,
        "suite": "bench",
        "model": model,
        "scale": "tiny",
        "method": method,
        "budget": budget,
        "num_steps": T,
        "config_tag": tag,
        "flops_speedup": speed,
        "wall_speedup": round(speed * 0.8, 3) if not full else 1.0,
        "psnr": 100.0 if full else psnr,
        "ssim": 1.0 if full else (0.5 + (psnr or 0) / 100),
        "lpips": None,
        "adherence": 0.67,
        "schedule": list(range(T)) if full else (_schedule(budget) if method == "dpcache" else None),
        "cache_hits": [budget] * 3 if method not in ("full", "fewer-steps") else None,
        "per_prompt": {"psnr": [psnr + i for i in range(3)]} if psnr is not None and not full else {},
        "prompts": PROMPTS,
        "timing": {"repeats": 5, "warmup": 1},
        "git_sha": "0123456789abcdef",
        "versions": {"torch": "2.13.0+cpu"},
        "device": "cpu",
        "extra_metrics": {"measured_k": budget + 0.2},
        "unavailable": unavailable,
    }
    rec.update(extra)
    return rec


def records() -> list[dict[str, Any]]:
    flux = [
        record("flux-tiny", "full", T, None, 1.0),
        record("flux-tiny", "dpcache", 10, 38.0, 1.95),
        record("flux-tiny", "dpcache", 6, 31.0, 3.2),
        record("flux-tiny", "fewer-steps", 10, 34.0, 2.0),
        record("flux-tiny", "fewer-steps", 6, 29.5, 3.33),
        record("flux-tiny", "teacache", 10, None, 1.9),
        record("flux-tiny", "fora", 10, 30.0, 2.05),
        record("flux-tiny", "fora", 6, 27.0, 3.4),
    ]
    wan = [
        record("wan-tiny", "full", T, None, 1.0),
        record("wan-tiny", "dpcache", 10, 35.0, 1.9),
        record("wan-tiny", "fewer-steps", 10, 33.0, 2.0),
    ]
    return flux + wan


def _png(path: Path, fg: tuple[int, int, int], bg: tuple[int, int, int], shift: int, size: int = 16) -> None:
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (size, size), bg)
    ImageDraw.Draw(im).rectangle((4 + shift, 3, 10 + shift, 12), fill=fg)
    im.save(path)


def _heatmap(path: Path) -> None:
    from PIL import Image

    im = Image.new("RGB", (560, 220))
    im.putdata([(x * 255 // 560, (x + 3 * y) % 256, 255 - y) for y in range(220) for x in range(560)])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def make_run(root: Path) -> tuple[Path, Path]:
    """Write `root/results.jsonl` and the run's images under `root/bench-artifacts/runs/<invocation>/`
    (flux-tiny: one image per prompt + cost_tensor.png; wan-tiny: 3 frames per prompt, no cost tensor).
    Returns (json path, artifacts root)."""
    recs = records()
    src = root / "results.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs) + "not json\n")
    art = root / "bench-artifacts" / "runs"
    for r in recs:
        if r["method"] == "teacache":
            continue  # a config without saved images: its grid cells say n/a
        d = art / INVOCATION / r["model"] / r["config_tag"]
        shift = 0 if r["method"] == "full" else (1 if r["method"] == "dpcache" else 2)
        for i in range(3):
            if r["model"] == "wan-tiny":
                for f in range(3):
                    _png(d / f"prompt{i:02d}_f{f:02d}.png", COLOURS[i], BACKGROUNDS[i], shift + f)
            else:
                _png(d / f"prompt{i:02d}.png", COLOURS[i], BACKGROUNDS[i], shift)
    _heatmap(art / INVOCATION / "flux-tiny" / "cost_tensor.png")
    return src, art
