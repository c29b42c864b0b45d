"""Synthetic training clips for the tiny video pipelines: a coloured digit moving across a scene.

Each clip is ``(3, F, S, S)`` in ``[-1, 1]`` (the layout diffusers' video VAEs take), built from
scikit-learn's bundled ``load_digits()``: a digit of a named colour, at a random position and scale,
moves ``left``/``right``/``up``/``down`` with random speed, easing and a small perpendicular wobble, over a
dark textured background with grey distractor strokes. The caption is ``a {colour} {digit} moving
{direction}``. Also holds the prompt vocabulary the tiny tokenizers are built from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

COLOURS: dict[str, tuple[float, float, float]] = {
    "white": (1.0, 1.0, 1.0),
    "red": (1.0, 0.12, 0.08),
    "green": (0.1, 0.9, 0.15),
    "blue": (0.15, 0.3, 1.0),
    "yellow": (1.0, 0.9, 0.05),
}
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
DIGITS: tuple[str, ...] = tuple(str(i) for i in range(10))
# (dx, dy) in image coordinates (y grows downwards)
DIRECTION_VECTORS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}

NUM_FRAMES = 9
FRAME_SIZE = 32
#: side of the glyph box in pixels (the digit itself fills ~3/4 of it), drawn uniformly per clip
SCALE: tuple[float, float] = (21.0, 27.0)

#: every word a prompt (or the Hunyuan prompt template) can contain
PROMPT_WORDS: tuple[str, ...] = (
    "a",
    "moving",
    *tuple(COLOURS),
    *DIRECTIONS,
    *DIGITS,
    "describe",
    "the",
    "video",
    ":",
)


def make_prompt(colour: str, digit: int | str, direction: str) -> str:
    """The caption of one clip, e.g. ``a green 4 moving left``."""
    return f"a {colour} {digit} moving {direction}"


def parse_prompt(prompt: str) -> tuple[str, int, str]:
    """Inverse of :func:`make_prompt`: ``(colour, digit, direction)``."""
    words = prompt.split()
    return words[1], int(words[2]), words[4]


def all_prompts() -> list[str]:
    """All 200 captions (colour x digit x direction), in a fixed order."""
    return [make_prompt(c, d, m) for c in COLOURS for d in range(10) for m in DIRECTIONS]


def eval_prompts(n: int = 20) -> list[str]:
    """A fixed, balanced selection of ``n`` captions: digits cycle, colours and directions rotate."""
    cols, dirs = list(COLOURS), list(DIRECTIONS)
    return [make_prompt(cols[(3 * i + i // 10) % 5], i % 10, dirs[(i + i // 10) % 4]) for i in range(n)]


@lru_cache(maxsize=1)
def _digit_bank() -> tuple[torch.Tensor, torch.Tensor]:
    from harness.zoo.digits_data import _digits, _typical

    images, targets = _digits()
    keep = _typical()  # the half of each class closest to its mean, as for the image generators
    imgs = torch.tensor(images[keep], dtype=torch.float32)  # (N, 8, 8)
    # smoother glyphs: bicubic x2 (sampled later with bilinear interpolation)
    imgs = F.interpolate(imgs[:, None], size=(16, 16), mode="bicubic", align_corners=False).clamp(0, 1)
    return imgs, torch.tensor(targets[keep], dtype=torch.long)


def digit_glyphs(digit: int) -> torch.Tensor:
    """The typical 16x16 glyphs (``(n, 1, 16, 16)`` in [0, 1]) of one digit class."""
    imgs, labels = _digit_bank()
    return imgs[labels == digit]


@dataclass
class ClipSpec:
    """The random choices behind one clip (kept for tests and adherence checks)."""

    colour: str
    digit: int
    direction: str

    @property
    def prompt(self) -> str:
        return make_prompt(self.colour, self.digit, self.direction)


def _background(g: torch.Generator, n: int, size: int) -> torch.Tensor:
    """Dark, low-frequency textured backgrounds ``(n, 3, size, size)`` in [0, 1]."""
    base = torch.rand(n, 1, 1, 1, generator=g) * 0.18
    tint = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=g)  # desaturated tint
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    tex = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    yy = torch.linspace(-1, 1, size).view(1, 1, size, 1)
    xx = torch.linspace(-1, 1, size).view(1, 1, 1, size)
    ang = torch.rand(n, 1, 1, 1, generator=g) * 2 * math.pi
    grad = (torch.cos(ang) * xx + torch.sin(ang) * yy) * 0.5 + 0.5
    bg = base + 0.12 * tex + 0.08 * grad
    return (bg * tint).clamp(0, 0.35)


def _strokes(g: torch.Generator, n: int, size: int) -> torch.Tensor:
    """Grey distractor strokes (1-2 thin line segments per clip), ``(n, 1, size, size)`` alpha."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = torch.zeros(n, 1, size, size)
    for k in range(2):
        p0 = torch.rand(n, 2, generator=g) * size
        ang = torch.rand(n, generator=g) * math.pi
        length = 6 + torch.rand(n, generator=g) * 10
        present = (torch.rand(n, generator=g) < (0.8 if k == 0 else 0.4)).float()
        d = torch.stack([torch.cos(ang), torch.sin(ang)], -1)
        rel_x = xx[None] - p0[:, 0, None, None]
        rel_y = yy[None] - p0[:, 1, None, None]
        t = (rel_x * d[:, 0, None, None] + rel_y * d[:, 1, None, None]).clamp(min=0)
        t = torch.minimum(t, length[:, None, None])
        dist = ((rel_x - t * d[:, 0, None, None]) ** 2 + (rel_y - t * d[:, 1, None, None]) ** 2).sqrt()
        alpha = (1.2 - dist).clamp(0, 1) * present[:, None, None]
        out = torch.maximum(out, alpha[:, None])
    level = 0.25 + 0.25 * torch.rand(n, 1, 1, 1, generator=g)
    return out * level


def render_clips(
    specs: list[ClipSpec],
    generator: torch.Generator,
    num_frames: int = NUM_FRAMES,
    size: int = FRAME_SIZE,
) -> torch.Tensor:
    """Render clips for ``specs``: ``(n, 3, num_frames, size, size)`` in [-1, 1]."""
    g = generator
    n = len(specs)
    bg = _background(g, n, size)
    strokes = _strokes(g, n, size)
    scene = bg * (1 - strokes) + strokes  # grey strokes over the background
    out = torch.empty(n, 3, num_frames, size, size)
    u = torch.linspace(0, 1, num_frames)
    for i, s in enumerate(specs):
        glyphs = digit_glyphs(s.digit)
        glyph = glyphs[int(torch.randint(len(glyphs), (1,), generator=g))]
        r = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=g))  # noqa: E731
        # large glyphs (a 4x video VAE keeps a 12-px digit only as a blob: digit read in 20% of
        # reconstructions), so the travel is short enough to stay in frame
        scale0 = r(SCALE[0], SCALE[1])
        scale1 = scale0 * r(0.93, 1.07)
        travel = r(7.0, 11.0)
        gamma = r(0.7, 1.4)
        wobble_amp, wobble_phase = r(0.0, 1.2), r(0.0, 2 * math.pi)
        dx, dy = DIRECTION_VECTORS[s.direction]
        half = max(scale0, scale1) / 2
        lo, hi = half * 0.6, size - half * 0.6  # the glyph box has a margin: the digit stays in frame
        # along-axis start so that the whole path stays (mostly) in frame
        along0 = r(lo, hi - travel) if (dx + dy) > 0 else r(lo + travel, hi)
        across = r(lo + wobble_amp, hi - wobble_amp)
        prog = u**gamma
        along = along0 + (dx + dy) * travel * prog
        wob = across + wobble_amp * torch.sin(2 * math.pi * u * 0.8 + wobble_phase)
        cx, cy = (along, wob) if dx != 0 else (wob, along)
        scale = scale0 + (scale1 - scale0) * u
        # sampling grid: pixel -> glyph coordinates in [-1, 1]
        pix = torch.arange(size).float() + 0.5
        gx = (pix[None, None, :] - cx[:, None, None]) / (scale[:, None, None] / 2)
        gy = (pix[None, :, None] - cy[:, None, None]) / (scale[:, None, None] / 2)
        grid = torch.stack([gx.expand(-1, size, -1), gy.expand(-1, -1, size)], -1)
        alpha = F.grid_sample(
            glyph[None].expand(num_frames, -1, -1, -1),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )  # (F, 1, S, S)
        alpha = (alpha * 1.4).clamp(0, 1)
        colour = torch.tensor(COLOURS[s.colour]).view(1, 3, 1, 1) * r(0.85, 1.0)
        frames = scene[i : i + 1] * (1 - alpha) + colour * alpha  # (F, 3, S, S)
        out[i] = frames.permute(1, 0, 2, 3)
    return out * 2 - 1


def random_specs(generator: torch.Generator, n: int) -> list[ClipSpec]:
    """``n`` uniformly random (colour, digit, direction) choices."""
    cols, dirs = list(COLOURS), list(DIRECTIONS)
    c = torch.randint(len(cols), (n,), generator=generator).tolist()
    d = torch.randint(10, (n,), generator=generator).tolist()
    m = torch.randint(len(dirs), (n,), generator=generator).tolist()
    return [ClipSpec(cols[a], b, dirs[e]) for a, b, e in zip(c, d, m)]


def sample_batch(
    generator: torch.Generator, n: int, num_frames: int = NUM_FRAMES, size: int = FRAME_SIZE
) -> tuple[torch.Tensor, list[str]]:
    """A random batch: clips ``(n, 3, F, S, S)`` in [-1, 1] and their captions."""
    specs = random_specs(generator, n)
    return render_clips(specs, generator, num_frames, size), [s.prompt for s in specs]
