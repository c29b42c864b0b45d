"""Tiny and medium WanImageToVideoPipeline builders: first-frame conditioning, as Wan2.1-I2V runs at full scale.

The released DPCache Wan schedule was made for Wan2.1-I2V-14B-720P (``WanImageToVideoPipeline``: the first
frame, VAE-encoded with zeros for the later frames, and a 4-channel frame mask are concatenated to the noisy
latents, so the transformer takes 16 + 4 + 16 = 36 channels, as the 14B model does). ``wan-i2v-tiny`` shares
``wan-tiny``'s VAE, text encoder and tokenizer (the committed directory links to them) and has its own
12-block transformer and the 720P sampler settings (UniPC, flow shift 5; guidance 3.0 as in the released
DPCache run).

No CLIP image encoder: diffusers' Wan2.1 I2V attention splits the context at a hard-coded 512 text tokens
(``transformer_wan.py``: ``image_context_length = encoder_hidden_states.shape[1] - 512``), so CLIP image
tokens need the full 512-token text context, whose cross-attention would then cost several times the rest
of a tiny block. The first-frame latent concatenation — what conditions the trajectory — is kept; the
pipeline skips ``encode_image`` when the transformer has no ``image_dim`` (as for Wan2.2's I2V models).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import torch

from harness.zoo import wan_tiny
from harness.zoo.video_data import FRAME_SIZE, ClipSpec, parse_prompt, render_clips

NAME = "wan-i2v-tiny"
TINY_DIR = Path(__file__).resolve().parent / "tiny" / NAME
SHARED_FROM_T2V = ("vae", "text_encoder", "tokenizer")  # linked to ../wan-tiny/<component>
FLOW_SHIFT = 5.0  # Wan2.1 generate.py: shift 5 for 720P (3 for 480P I2V)
GUIDANCE_SCALE = 3.0  # the released DPCache Wan run
MASK_CHANNELS = 4  # the pipeline's frame mask: vae_scale_factor_temporal channels


def build_transformer(size: str = "tiny", seed: int = 0):
    """wan-tiny's transformer with I2V's input: noisy latents + frame mask + first-frame latents."""
    latent = wan_tiny._SIZES[size]["latent"]
    return wan_tiny.build_transformer(size, seed, in_channels=2 * latent + MASK_CHANNELS, init_offset=5)


def build_scheduler():
    """Wan 2.1's UniPC with the 720P flow shift."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config(wan_tiny.build_scheduler().config, flow_shift=FLOW_SHIFT)


def build_pipeline(
    seed: int = 0, trained: bool = False, size: str = "tiny", path: str | os.PathLike | None = None
):
    """A ``WanImageToVideoPipeline``: trained tiny weights from disk, or ``tiny``/``medium`` weights built here
    (the untrained tiny one takes wan-tiny's committed VAE and text encoder when they exist: the transformer is
    trained on that VAE's latents)."""
    from diffusers import DiffusionPipeline, WanImageToVideoPipeline

    if trained:
        return DiffusionPipeline.from_pretrained(str(path or TINY_DIR))
    if size not in wan_tiny._SIZES:
        raise ValueError(f"size must be one of {sorted(wan_tiny._SIZES)}, not {size!r}")
    if size == "tiny" and (wan_tiny.TINY_DIR / "model_index.json").exists():
        t2v = wan_tiny.build_pipeline(trained=True)
    else:
        t2v = wan_tiny.build_pipeline(seed=seed, size=size)
    pipe = WanImageToVideoPipeline(
        tokenizer=t2v.tokenizer,
        text_encoder=t2v.text_encoder,
        vae=t2v.vae,
        scheduler=build_scheduler(),
        transformer=build_transformer(size, seed),
        image_encoder=None,
        image_processor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def link_shared(out: Path) -> None:
    """Replace the components saved in ``out`` that were loaded from wan-tiny (``build_pipeline``) by relative
    links to wan-tiny's, after checking that their weight and tokenizer files are byte-identical (the configs
    may differ only in what the installed library version writes)."""
    import filecmp
    import shutil

    for comp in SHARED_FROM_T2V:
        mine, theirs = out / comp, wan_tiny.TINY_DIR / comp
        if mine.is_symlink() or not mine.is_dir():
            continue
        files = sorted(p.name for p in mine.iterdir() if p.name != "config.json")
        mismatch, errors = filecmp.cmpfiles(mine, theirs, files, shallow=False)[1:]
        if mismatch or errors:
            raise RuntimeError(f"{mine}: {mismatch + errors} differ from {theirs}: not linking")
        shutil.rmtree(mine)
        mine.symlink_to(Path("..") / wan_tiny.NAME / comp, target_is_directory=True)


def first_frame(prompt: str, size: int = FRAME_SIZE):
    """The conditioning image of ``prompt`` (PIL): the first frame of a clip rendered for its colour, digit and
    direction, seeded by the prompt's text, so the same prompt always gets the same image."""
    colour, digit, direction = parse_prompt(prompt)
    gen = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    clip = render_clips([ClipSpec(colour, digit, direction)], gen, num_frames=1, size=size)[0, :, 0]
    return to_pil(clip)


def to_pil(frame: torch.Tensor):
    """A ``(3, H, W)`` frame in [-1, 1] as an 8-bit PIL image (what a user passes as ``image=``)."""
    from PIL import Image

    arr = ((frame.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def default_call_kwargs(size: str = "tiny") -> dict[str, Any]:
    """Keyword arguments for a fast, faithful call (add ``prompt``, ``image`` and ``generator``)."""
    kw = wan_tiny.default_call_kwargs(size)
    kw["guidance_scale"] = GUIDANCE_SCALE
    return kw
