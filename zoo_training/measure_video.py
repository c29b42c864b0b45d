"""Measure a tiny video pipeline: trajectory difficulty, K=13 reuse vs 13-step sampling, cost, adherence.

``python -m zoo_training.measure_video NAME`` (``wan-tiny`` | ``wan-i2v-tiny`` | ``hunyuan-video-tiny``) writes
``reports/zoo/NAME.json``, ``NAME.png`` (frame strips with prompts) and ``NAME.gif``:

- per-step relative change ``|o_t - o_{t-1}| / |o_{t-1}|`` of the (conditional) transformer output
  along the 50-step trajectory;
- PSNR (frames in [0, 1], capped at 100 dB) against the 50-step output of (a) plain 13-step sampling
  and (b) the 50-step schedule computing the transformer at only K=13 steps (first 3, then uniformly
  spread) and reusing the previous output in between (a forward wrapper, per CFG branch);
- parameters, size on disk, training time, seconds per 50-step sample (one thread);
- prompt adherence: digit and colour read by the shared scene classifier over the middle frames,
  direction from the foreground blob's centroid motion; the checks are also scored on real clips.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.metrics import psnr_db
from harness.zoo import hunyuan_tiny, wan_i2v_tiny, wan_tiny
from harness.zoo.classifier import video_adherence
from harness.zoo.video_data import (
    ClipSpec,
    eval_prompts,
    parse_prompt,
    render_clips,
)
from zoo_training.measure import reuse_schedule

REPORTS = Path(__file__).resolve().parents[1] / "reports" / "zoo"
MODULES = {"wan-tiny": wan_tiny, "wan-i2v-tiny": wan_i2v_tiny, "hunyuan-video-tiny": hunyuan_tiny}
T, K, FIRST = 50, 13, 3


class ForwardWrap:
    """Replaces ``transformer.forward``: records outputs and optionally reuses them off ``keys``."""

    def __init__(self, transformer, calls_per_step: int, keys: list[int] | None = None, record: bool = False):
        self.tr, self.cps, self.keys, self.record = transformer, calls_per_step, keys, record
        self.orig = transformer.forward
        self.calls, self.computed = 0, 0
        self.cache: dict[int, Any] = {}
        self.outputs: list[tuple[int, int, torch.Tensor]] = []
        transformer.forward = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        step, branch = divmod(self.calls, self.cps)
        self.calls += 1
        if self.keys is None or step in self.keys or branch not in self.cache:
            out = self.orig(*args, **kwargs)
            self.cache[branch] = out
            self.computed += 1
        else:
            out = self.cache[branch]
        if self.record:
            self.outputs.append((step, branch, out[0].detach().clone()))
        return out

    def remove(self) -> None:
        del self.tr.forward


def _run(pipe, kwargs: dict[str, Any], prompt: str, seed: int, **over: Any) -> torch.Tensor:
    kw = {**kwargs, **over}
    if type(pipe).__name__ == "WanImageToVideoPipeline":  # conditioned on the prompt's first frame
        kw["image"] = wan_i2v_tiny.first_frame(prompt, kw["height"])
    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), **kw).frames[0]  # (F, 3, H, W)


def checker_accuracy(prompts: list[str], seed: int = 77) -> dict[str, Any]:
    """The adherence checks scored on real clips of the training distribution (their ceiling)."""
    g = torch.Generator().manual_seed(seed)
    specs = [ClipSpec(*parse_prompt(p)) for p in prompts]
    clips = ((render_clips(specs, g) + 1) / 2).permute(0, 2, 1, 3, 4)  # (n, F, 3, H, W)
    res = video_adherence(list(clips), prompts)
    res.pop("per_prompt")
    return res


# ---------------------------------------------------------------- reports
def save_strips(videos: list[torch.Tensor], prompts: list[str], png: Path, gif: Path, scale: int = 3) -> None:
    """PNG: one row per sample (prompt, then its frames); GIF: the samples in a grid, animated."""
    from PIL import Image, ImageDraw

    n, f = len(videos), videos[0].shape[0]
    h, w = videos[0].shape[-2] * scale, videos[0].shape[-1] * scale
    label_w = 170
    sheet = Image.new("RGB", (label_w + f * (w + 2), n * (h + 2)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)

    def to_img(fr):
        return Image.fromarray((fr.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))

    for i, (v, p) in enumerate(zip(videos, prompts)):
        draw.text((6, i * (h + 2) + h // 2 - 6), p, fill=(235, 235, 235))
        for j in range(f):
            sheet.paste(to_img(v[j]).resize((w, h), Image.NEAREST), (label_w + j * (w + 2), i * (h + 2)))
    sheet.save(png)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    frames = []
    for j in range(f):
        canvas = Image.new("RGB", (cols * (w + 2), rows * (h + 14)), (30, 30, 30))
        d = ImageDraw.Draw(canvas)
        for i, (v, p) in enumerate(zip(videos, prompts)):
            x, y = (i % cols) * (w + 2), (i // cols) * (h + 14)
            canvas.paste(to_img(v[j]).resize((w, h), Image.NEAREST), (x, y + 12))
            d.text((x + 1, y), p.replace("moving ", ""), fill=(235, 235, 235))
        frames.append(canvas)
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=180, loop=0)


def dir_size(path: Path) -> int:
    """Bytes of the files stored in ``path`` (components linked from another model's directory not counted)."""
    return sum(
        f.stat().st_size
        for root, _dirs, files in os.walk(path)  # os.walk does not descend into linked directories
        for f in (Path(root) / n for n in files)
    )


def measure(name: str, n_prompts: int = 20, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """All numbers for ``name``; writes the JSON, PNG and GIF under ``reports/zoo/``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    mod = MODULES[name]
    src = Path(path) if path else mod.TINY_DIR
    pipe = mod.build_pipeline(trained=True, path=src)
    pipe.set_progress_bar_config(disable=True)
    kw = mod.default_call_kwargs()
    prompts = eval_prompts(n_prompts)
    cps = 2  # both pipelines run CFG: conditional + unconditional forward per step
    keys = reuse_schedule(T, K, FIRST)
    full, plain, reuse, rel_curves = [], [], [], []
    for i, p in enumerate(prompts):
        wrap = ForwardWrap(pipe.transformer, cps, record=True)
        full.append(_run(pipe, kw, p, i))
        wrap.remove()
        outs = [o for s, b, o in wrap.outputs if b == 0]
        rel_curves.append(
            [float((outs[t] - outs[t - 1]).norm() / outs[t - 1].norm()) for t in range(1, len(outs))]
        )
        plain.append(_run(pipe, kw, p, i, num_inference_steps=K))
        wrap = ForwardWrap(pipe.transformer, cps, keys=keys)
        reuse.append(_run(pipe, kw, p, i))
        wrap.remove()
        assert wrap.computed == K * cps, wrap.computed
    rel = np.array(rel_curves).mean(0)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        _run(pipe, kw, prompts[0], 0)
        times.append(time.perf_counter() - t0)
    train_info = REPORTS / f"{name}-train.json"
    tinfo = json.loads(train_info.read_text()) if train_info.exists() else {}
    params = {
        k: sum(p.numel() for p in v.parameters())
        for k, v in pipe.components.items()
        if hasattr(v, "parameters")
    }
    det = _run(pipe, kw, prompts[0], 0)
    res = {
        "name": name,
        "pipeline_class": type(pipe).__name__,
        "call_kwargs": {k: v for k, v in kw.items() if k != "prompt_template"},
        "params": params,
        "params_total": sum(params.values()),
        "size_on_disk_bytes": dir_size(src),
        "train_seconds": tinfo.get("train_seconds"),
        "train_seconds_by_component": {k: c["train_seconds"] for k, c in tinfo.get("components", {}).items()},
        "seconds_per_50_step_sample": round(statistics.median(times), 3),
        "threads": torch.get_num_threads(),
        "deterministic": bool(torch.equal(det, full[0])),
        "rel_change_per_step": [round(float(v), 5) for v in rel],
        "rel_change_mean": round(float(rel.mean()), 5),
        "rel_change_median": round(float(np.median(rel)), 5),
        "K": K,
        "key_steps": keys,
        "psnr_plain_13_step": round(float(np.mean([psnr_db(a, b) for a, b in zip(plain, full)])), 2),
        "psnr_reuse_K13": round(float(np.mean([psnr_db(a, b) for a, b in zip(reuse, full)])), 2),
        "adherence": video_adherence(full, prompts),
        "checker_on_real_clips": checker_accuracy(prompts),
        "prompts": prompts,
    }
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"{name}.json").write_text(json.dumps(res, indent=1))
    save_strips(full[:8], prompts[:8], REPORTS / f"{name}.png", REPORTS / f"{name}.gif")
    return res


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m zoo_training.measure_video NAME [N_PROMPTS]``; prints the summary."""
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0] if argv else "wan-tiny"
    res = measure(name, int(argv[1]) if len(argv) > 1 else 20)
    adh = {k: v for k, v in res["adherence"].items() if k != "per_prompt"}
    keys = (
        "params_total",
        "size_on_disk_bytes",
        "train_seconds",
        "train_seconds_by_component",
        "seconds_per_50_step_sample",
        "deterministic",
        "rel_change_mean",
        "rel_change_median",
        "psnr_plain_13_step",
        "psnr_reuse_K13",
    )
    for k in keys:
        print(f"{k}: {res[k]}")
    print("adherence:", adh)
    print("checker on real clips:", res["checker_on_real_clips"])


if __name__ == "__main__":
    main()
