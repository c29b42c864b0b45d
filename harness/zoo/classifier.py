"""Digit / colour / background classifier for digit scenes: the CPU stand-in for ImageReward/CLIP score.

A small CNN trained here on the scene generator (``python -m zoo_training.train classifier``), with
blur and noise augmentation so that it also reads the tiny pipelines' decoded samples. Weights live in
``harness/zoo/tiny/classifier/model.safetensors``. ``prompt_adherence(images, prompts)`` returns the
fraction of images whose digit (and, for text prompts, colour and background) match the prompt;
``video_adherence(videos, prompts)`` the same for the video models (digit, colour, direction of motion).
Training it: ``zoo_training/train_classifier.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.zoo import digits_data, video_data

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


@functools.lru_cache(maxsize=1)
def load_classifier(path: str | None = None) -> SceneClassifier:
    """The committed classifier (raises FileNotFoundError with the training command if absent)."""
    from safetensors.torch import load_file

    f = Path(path) if path else CLASSIFIER_DIR / "model.safetensors"
    if not f.exists():
        raise FileNotFoundError(f"{f} not found: run `python -m zoo_training.train classifier`")
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


# ---------------------------------------------------------------- videos
def _blob(frame: torch.Tensor) -> torch.Tensor:
    """Mask of the foreground digit: pixels far from the frame's median colour and bright enough."""
    med = frame.flatten(1).median(1).values.view(3, 1, 1)
    dist = (frame - med).norm(dim=0)
    return (dist > 0.35) & (frame.amax(0) > 0.45)


def _direction(video: torch.Tensor) -> str | None:
    """The direction of the blob's centroid motion from the first two to the last two frames."""
    f = video.shape[0]
    cents = []
    for i in (0, 1, f - 2, f - 1):
        mi = _blob(video[i])
        if mi.sum() < 3:
            return None
        ys, xs = torch.nonzero(mi, as_tuple=True)
        cents.append((float(xs.float().mean()), float(ys.float().mean())))
    dx = (cents[2][0] + cents[3][0] - cents[0][0] - cents[1][0]) / 2
    dy = (cents[2][1] + cents[3][1] - cents[0][1] - cents[1][1]) / 2
    return max(
        video_data.DIRECTION_VECTORS,
        key=lambda k: video_data.DIRECTION_VECTORS[k][0] * dx + video_data.DIRECTION_VECTORS[k][1] * dy,
    )


@torch.no_grad()
def read_video(video: torch.Tensor) -> dict[str, Any]:
    """(digit, colour, direction) shown by a video ``(F, 3, H, W)`` in [0, 1].

    Digit and colour: the committed scene classifier (FileNotFoundError when its weights are absent),
    log-probabilities summed over the middle half of the frames, where the digit is whole. Direction: the
    foreground blob's centroid motion.
    """
    f = video.shape[0]
    frames = video[f // 4 : f - f // 4]
    out = load_classifier()(to_batch(frames))
    digit = int(out["digit"].log_softmax(1).sum(0).argmax())
    # only the palette a video prompt can name: the classifier's other colours are never asked for
    names = [c for c in digits_data.COLOUR_NAMES if c in video_data.COLOURS]
    idx = [digits_data.COLOUR_NAMES.index(c) for c in names]
    colour = names[int(out["colour"].log_softmax(1)[:, idx].sum(0).argmax())]
    return {"digit": digit, "colour": colour, "direction": _direction(video)}


def video_adherence(videos: list[torch.Tensor], prompts: list[str]) -> dict[str, Any]:
    """Fractions of videos whose digit / colour / direction match the prompt (see :func:`read_video`)."""
    rows = []
    for v, p in zip(videos, prompts):
        colour, digit, direction = video_data.parse_prompt(p)
        o = read_video(v)
        rows.append(
            {
                "prompt": p,
                "read": o,
                "digit": o["digit"] == digit,
                "colour": o["colour"] == colour,
                "direction": o["direction"] == direction,
            }
        )
    res: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in ("digit", "colour", "direction")}
    res["all"] = float(np.mean([r["digit"] and r["colour"] and r["direction"] for r in rows]))
    res["per_prompt"] = rows
    return res
