"""Digit / colour / background classifier for digit scenes: the CPU stand-in for ImageReward/CLIP score.

A small CNN trained here on the scene generator (``python -m harness.zoo.train classifier``), with
blur and noise augmentation so that it also reads the tiny pipelines' decoded samples. Weights live in
``harness/zoo/tiny/classifier/model.safetensors``. ``prompt_adherence(images, prompts)`` returns the
fraction of images whose digit (and, for text prompts, colour and background) match the prompt.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.zoo import digits_data

CLASSIFIER_DIR = Path(__file__).parent / "tiny" / "classifier"
HEADS = {
    "digit": 10,
    "colour": len(digits_data.COLOUR_NAMES),
    "background": len(digits_data.BACKGROUND_NAMES),
}


class SceneClassifier(nn.Module):
    """Four conv stages, global average+max pooling, one linear head per attribute."""

    def __init__(self, width: int = 16):
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU())

        w = width
        self.features = nn.Sequential(
            block(3, w),
            block(w, w),
            nn.MaxPool2d(2),
            block(w, 2 * w),
            block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            block(2 * w, 4 * w),
            block(4 * w, 4 * w),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(8 * w, n) for k, n in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, 32, 32) in [0, 1] → logits per head."""
        f = self.features(x * 2 - 1)
        f = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        return {k: h(f) for k, h in self.heads.items()}


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random blur (what a small VAE does), brightness jitter and pixel noise."""
    n = x.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    a = torch.rand(n, 1, 1, 1, generator=g)
    x = x * (1 - a) + blurred * a
    x = x * (0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=g))
    x = x + 0.04 * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def _targets(scenes: Sequence[digits_data.Scene]) -> dict[str, torch.Tensor]:
    return {
        "digit": torch.tensor([s.digit for s in scenes]),
        "colour": torch.tensor([digits_data.COLOUR_NAMES.index(s.colour) for s in scenes]),
        "background": torch.tensor([digits_data.BACKGROUND_NAMES.index(s.background) for s in scenes]),
    }


def train_classifier(seed: int = 0, iters: int = 1500, batch: int = 128, n_data: int = 30000) -> dict:
    """Train on fresh scenes and save to CLASSIFIER_DIR; returns held-out accuracies."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    images, scenes = digits_data.sample_scenes(n_data, seed=seed + 500, **digits_data.CLASSIFIER_SCENES)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y_all = _targets(scenes)
    model = SceneClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for it in range(iters):
        idx = torch.randint(0, n_data, (batch,), generator=g)
        out = model(_augment(x_all[idx], g))
        loss = sum(F.cross_entropy(out[k], y_all[k][idx]) for k in HEADS)
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (it + 1) / 100) * (1 - it / iters)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 100 == 0:
            print(f"classifier it {it} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    acc = {}
    for name, kw in (("default", {}), ("generator", digits_data.GENERATOR_SCENES)):
        test_images, test_scenes = digits_data.sample_scenes(2000, seed=seed + 999, **kw)
        acc[name] = evaluate(model, torch.from_numpy(test_images).permute(0, 3, 1, 2), test_scenes)
    CLASSIFIER_DIR.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(CLASSIFIER_DIR / "model.safetensors"),
        metadata={"format": "pt", "heads": json.dumps(HEADS)},
    )
    (CLASSIFIER_DIR / "config.json").write_text(
        json.dumps(
            {
                "heads": HEADS,
                "colours": digits_data.COLOUR_NAMES,
                "backgrounds": digits_data.BACKGROUND_NAMES,
                "held_out_accuracy": acc,
                "seed": seed,
                "iters": iters,
            },
            indent=2,
        )
        + "\n"
    )
    load_classifier.cache_clear()
    return {"train_seconds": time.time() - t0, "held_out_accuracy": acc}


@torch.no_grad()
def evaluate(
    model: SceneClassifier, x: torch.Tensor, scenes: Sequence[digits_data.Scene]
) -> dict[str, float]:
    out = model(x.float())
    y = _targets(scenes)
    return {k: float((out[k].argmax(1) == y[k]).float().mean()) for k in HEADS}


@functools.lru_cache(maxsize=1)
def load_classifier(path: str | None = None) -> SceneClassifier:
    """The committed classifier (raises FileNotFoundError with the training command if absent)."""
    from safetensors.torch import load_file

    f = Path(path) if path else CLASSIFIER_DIR / "model.safetensors"
    if not f.exists():
        raise FileNotFoundError(f"{f} not found: run `python -m harness.zoo.train classifier`")
    model = SceneClassifier()
    model.load_state_dict(load_file(str(f)))
    return model.eval()


def to_batch(images) -> torch.Tensor:
    """PIL images, an (N, H, W, 3) array in [0, 1] or an (N, 3, H, W) tensor in [0, 1] → (N, 3, 32, 32)."""
    if isinstance(images, torch.Tensor):
        x = images.float()
        if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
    else:
        if isinstance(images, np.ndarray):
            arr = images.astype(np.float32)
        else:
            arr = np.stack([np.asarray(im.convert("RGB"), np.float32) / 255.0 for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    x = x.clamp(0, 1)
    if x.shape[-1] != digits_data.IMAGE_SIZE:
        x = F.interpolate(
            x, size=(digits_data.IMAGE_SIZE,) * 2, mode="bilinear", antialias=True, align_corners=False
        )
    return x


@torch.no_grad()
def predict(images) -> list[digits_data.Scene]:
    """The classifier's reading of each image as a Scene."""
    out = load_classifier()(to_batch(images))
    d, c, b = (out[k].argmax(1).tolist() for k in ("digit", "colour", "background"))
    return [
        digits_data.Scene(di, digits_data.COLOUR_NAMES[ci], digits_data.BACKGROUND_NAMES[bi])
        for di, ci, bi in zip(d, c, b)
    ]


def prompt_adherence(images, prompts: Sequence[str | int]) -> dict:
    """Fraction of images matching their prompt: digit always; colour and background for text prompts.

    ``prompts`` are scene prompts (``'a red 7 on a black background'``) or bare class labels (DiT).
    Returns ``{"n", "digit", "colour", "background", "all", "per_prompt": [...]}``; a field that no
    prompt specifies is ``None``.
    """
    preds = predict(images)
    if len(preds) != len(prompts):
        raise ValueError(f"{len(preds)} images but {len(prompts)} prompts")
    rows = []
    for p, s in zip(prompts, preds):
        want = digits_data.parse_prompt(p) if isinstance(p, str) and not p.strip().isdigit() else None
        digit = int(p) if want is None else want.digit
        row = {"prompt": str(p), "pred": s.prompt, "digit": s.digit == digit}
        if want is not None:
            row["colour"] = s.colour == want.colour
            row["background"] = s.background == want.background
            row["all"] = row["digit"] and row["colour"] and row["background"]
        rows.append(row)

    def frac(key: str) -> float | None:
        vals = [r[key] for r in rows if key in r]
        return float(np.mean(vals)) if vals else None

    return {
        "n": len(rows),
        "digit": frac("digit"),
        "colour": frac("colour"),
        "background": frac("background"),
        "all": frac("all"),
        "per_prompt": rows,
    }
