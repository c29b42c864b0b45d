"""Coloured digit scenes made from scikit-learn's bundled digits and skimage's bundled textures.

A scene is a 32×32 RGB image in [0, 1]: a digit from ``load_digits()`` (8×8, upsampled to a random
size and placed at a random position) in a named colour, over a plain colour background or a texture
cut from one of ``skimage.data``'s bundled photos, plus one or two short distractor strokes. Scenes
are rich enough that rectified-flow paths are not straight (the zoo issue measured that single
centred digits make every cache look perfect). Everything is deterministic given a seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
    "red": (0.9, 0.12, 0.1),
    "green": (0.1, 0.75, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}
TEXTURES: dict[str, tuple[str, tuple[float, float, float]]] = {
    "brick": ("brick", (1.0, 0.72, 0.6)),
    "grass": ("grass", (0.7, 1.0, 0.65)),
    "gravel": ("gravel", (0.9, 0.9, 1.0)),
}
COLOUR_NAMES: list[str] = list(COLOURS)
BACKGROUND_NAMES: list[str] = COLOUR_NAMES + list(TEXTURES)
DIGIT_NAMES: list[str] = [str(d) for d in range(10)]
PROMPT_WORDS: list[str] = ["a", "on", "background", *COLOUR_NAMES, *TEXTURES, *DIGIT_NAMES]
IMAGE_SIZE = 32
# What the generators train on: the same scenes with the digit drawn large (23–29 px of 32 rather than
# 14–22), so its distinguishing strokes span more than one 4×4-px transformer token, from the more
# typical half of each class's glyphs. Textures and distractor strokes stay. (18–24 px reached only
# 34–39% digit adherence in the CPU budget.) The classifier trains on every size from 14 to 30 px
# (CLASSIFIER_SCENES), so it reads what a generator draws as well as the default scenes.
GENERATOR_SCENES: dict = {"digit_sizes": (23, 30), "typical_only": True}
CLASSIFIER_SCENES: dict = {"digit_sizes": (14, 31)}


@dataclass(frozen=True)
class Scene:
    """What a scene shows: the prompt's three slots."""

    digit: int
    colour: str
    background: str

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.digit} on a {self.background} background"


def parse_prompt(prompt: str) -> Scene:
    """Inverse of ``Scene.prompt``: ``'a red 7 on a black background'`` → Scene(7, 'red', 'black')."""
    words = prompt.lower().replace(",", " ").split()
    try:
        digit = next(int(w) for w in words if w.isdigit())
        colour = next(w for w in words if w in COLOURS)
        i_on = words.index("on")
        background = next(w for w in words[i_on:] if w in BACKGROUND_NAMES)
    except (StopIteration, ValueError) as exc:
        raise ValueError(f"not a digit-scene prompt: {prompt!r}") from exc
    return Scene(digit, colour, background)


def all_scenes() -> list[Scene]:
    """Every valid (digit, colour, background) combination; the colour never equals the background."""
    return [Scene(d, c, b) for d in range(10) for c in COLOUR_NAMES for b in BACKGROUND_NAMES if c != b]


def prompt_split(
    seed: int = 1234, n_calibration: int = 32, n_evaluation: int = 64
) -> tuple[list[str], list[str]]:
    """Disjoint calibration and evaluation prompt lists, each covering every digit evenly."""
    rng = np.random.default_rng(seed)
    scenes = all_scenes()
    by_digit: dict[int, list[Scene]] = {d: [s for s in scenes if s.digit == d] for d in range(10)}
    for lst in by_digit.values():
        rng.shuffle(lst)
    calib = [by_digit[i % 10][i // 10].prompt for i in range(n_calibration)]
    offset = (n_calibration + 9) // 10
    evals = [by_digit[i % 10][offset + i // 10].prompt for i in range(n_evaluation)]
    assert not set(calib) & set(evals)
    return calib, evals


def label_prompt_split(n_labels: int = 8) -> tuple[list[str], list[str]]:
    """The split for a class-label model (DiT conditions on the digit only, not on the prompt text).

    Evaluation: :func:`prompt_split`'s evaluation prompts of digits 0 … n_labels-1, in order (the first 8 are
    digits 0-7, as before; 52 in all for the default); calibration: its calibration prompts of the other
    digits (8 and 9), so no label the model is calibrated on is ever scored.
    """
    if not 1 <= n_labels <= 9:
        raise ValueError(f"n_labels must be 1..9 (a label must stay free for calibration), got {n_labels}")
    calib, evals = prompt_split()
    evals = [p for p in evals if parse_prompt(p).digit < n_labels]
    return [p for p in calib if parse_prompt(p).digit >= n_labels], evals


def probe_prompts(n: int = 40, seed: int = 1234) -> list[str]:
    """Held-out prompts for adherence probes while training: disjoint (as strings) from both lists of
    :func:`prompt_split`, every digit evenly (drawn after them from the same per-digit shuffle)."""
    rng = np.random.default_rng(seed)
    scenes = all_scenes()
    by_digit: dict[int, list[Scene]] = {d: [s for s in scenes if s.digit == d] for d in range(10)}
    for lst in by_digit.values():
        rng.shuffle(lst)
    calib, evals = prompt_split(seed)
    used = set(calib) | set(evals)
    start = (len(calib) + 9) // 10 + (len(evals) + 9) // 10
    probes = [by_digit[i % 10][start + i // 10].prompt for i in range(n)]
    assert not used & set(probes)
    return probes


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _typical() -> np.ndarray:
    """Indices of the half of each class's glyphs closest (L2) to the class mean."""
    images, targets = _digits()
    keep = []
    for d in range(10):
        idx = np.flatnonzero(targets == d)
        dist = ((images[idx] - images[idx].mean(0)) ** 2).sum((1, 2))
        keep.append(idx[dist <= np.median(dist)])
    return np.sort(np.concatenate(keep))


@functools.cache
def _texture(name: str) -> np.ndarray:
    import skimage.data

    src, tint = TEXTURES[name]
    img = getattr(skimage.data, src)().astype(np.float32) / 255.0
    if img.ndim == 3:
        img = img.mean(-1)
    img = (img - img.mean()) / (img.std() + 1e-6) * 0.13 + 0.45
    return np.clip(img[..., None] * np.asarray(tint, np.float32), 0, 1)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D array to (size, size), no dependencies beyond numpy."""
    h, w = img.shape
    ys = (np.arange(size) + 0.5) * h / size - 0.5
    xs = (np.arange(size) + 0.5) * w / size - 0.5
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 1)
    y1, x1 = np.clip(y0 + 1, 0, h - 1), np.clip(x0 + 1, 0, w - 1)
    wy = np.clip(ys - y0, 0, 1)[:, None]
    wx = np.clip(xs - x0, 0, 1)[None, :]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bot = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


def _background(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    if name in COLOURS:
        base = np.asarray(COLOURS[name], np.float32)
        return np.broadcast_to(base, (size, size, 3)).copy()
    tex = _texture(name)
    crop = int(rng.integers(size * 2, size * 5))
    y = int(rng.integers(0, tex.shape[0] - crop))
    x = int(rng.integers(0, tex.shape[1] - crop))
    patch = tex[y : y + crop, x : x + crop]
    return np.stack([_resize(patch[..., c], size) for c in range(3)], -1)


def _stroke_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A short anti-aliased line segment (length 4–9 px) somewhere in the image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    p0 = rng.uniform(2, size - 2, 2)
    ang = rng.uniform(0, np.pi)
    length = rng.uniform(4, 9)
    p1 = p0 + length * np.array([np.sin(ang), np.cos(ang)])
    d = p1 - p0
    t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / (d @ d), 0, 1)
    dist = np.hypot(yy - (p0[0] + t * d[0]), xx - (p0[1] + t * d[1]))
    return np.clip(1.2 - dist, 0, 1) * 0.8


def render(
    scene: Scene,
    rng: np.random.Generator,
    size: int = IMAGE_SIZE,
    index: int | None = None,
    digit_sizes: tuple[int, int] = (14, 23),
    typical_only: bool = False,
) -> np.ndarray:
    """One (size, size, 3) float32 image in [0, 1] showing ``scene``; randomness from ``rng``.

    The digit's side is drawn from ``digit_sizes`` (half-open, pixels at size 32, scaled with ``size``);
    ``typical_only`` draws the glyph from the typical half of its class (see ``GENERATOR_SCENES``).
    """
    images, targets = _digits()
    pool = _typical() if typical_only else np.arange(len(targets))
    candidates = pool[targets[pool] == scene.digit]
    idx = int(candidates[rng.integers(len(candidates))]) if index is None else index
    img = _background(scene.background, rng, size)
    for _ in range(int(rng.integers(1, 3))):
        other = [c for c in COLOUR_NAMES if c not in (scene.colour, scene.background)]
        col = np.asarray(COLOURS[other[int(rng.integers(len(other)))]], np.float32)
        m = _stroke_mask(rng, size)[..., None]
        img = img * (1 - m) + col * m
    lo, hi = (max(4, round(v * size / IMAGE_SIZE)) for v in digit_sizes)
    dsize = min(size, int(rng.integers(lo, hi)))
    glyph = _resize(images[idx], dsize)
    alpha = np.clip((glyph - 0.15) * 1.8, 0, 1)[..., None]
    y = int(rng.integers(0, size - dsize + 1))
    x = int(rng.integers(0, size - dsize + 1))
    col = np.asarray(COLOURS[scene.colour], np.float32) * rng.uniform(0.9, 1.05)
    region = img[y : y + dsize, x : x + dsize]
    img[y : y + dsize, x : x + dsize] = region * (1 - alpha) + np.clip(col, 0, 1) * alpha
    return np.clip(img, 0, 1).astype(np.float32)


def sample_scenes(
    n: int, seed: int, size: int = IMAGE_SIZE, texture_prob: float = 0.35, **render_kw
) -> tuple[np.ndarray, list[Scene]]:
    """``n`` random scenes: images (n, size, size, 3) in [0, 1] and their Scene labels.

    ``render_kw`` go to ``render`` (e.g. ``**GENERATOR_SCENES``).
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.float32)
    scenes: list[Scene] = []
    for i in range(n):
        digit = int(rng.integers(10))
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        if rng.random() < texture_prob:
            bg = list(TEXTURES)[int(rng.integers(len(TEXTURES)))]
        else:
            bgs = [c for c in COLOUR_NAMES if c != colour]
            bg = bgs[int(rng.integers(len(bgs)))]
        s = Scene(digit, colour, bg)
        out[i] = render(s, rng, size, **render_kw)
        scenes.append(s)
    return out, scenes
