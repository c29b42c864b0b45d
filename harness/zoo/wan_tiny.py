"""Tiny and medium WanPipeline (text-to-video) builders: UMT5 text encoder, Wan transformer, Wan video VAE.

``build_pipeline(trained=True)`` loads the committed ``harness/zoo/tiny/wan-tiny/`` pipeline;
``trained=False`` builds the same architecture with random weights (``size="tiny"``) or a larger one
whose transformer forward takes ~0.1-0.3 s on 2 CPU cores (``size="medium"``, nothing committed).
The scheduler is the real Wan 2.1 one: UniPC multistep, flow prediction, ``flow_shift=3``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from harness.zoo.video_data import FRAME_SIZE, NUM_FRAMES, PROMPT_WORDS

NAME = "wan-tiny"
TINY_DIR = Path(__file__).resolve().parent / "tiny" / NAME
MAX_SEQ_LEN = 12
FLOW_SHIFT = 3.0  # Wan 2.1 at 480p

_SIZES: dict[str, dict[str, Any]] = {
    # 12 thin blocks (Wan2.1-14B has 40): a one-block probe is under 10 % of a step's transformer FLOPs
    # (4 blocks of width 96 before: ~25 %) at about the same FLOPs per step
    "tiny": dict(heads=2, head_dim=28, layers=12, ffn=112, latent=16, base_dim=12, text_dim=32, freq_dim=64),
    "medium": dict(
        heads=8, head_dim=64, layers=4, ffn=2048, latent=16, base_dim=16, text_dim=64, freq_dim=256
    ),
}


def build_t5_tokenizer():
    """A ``T5Tokenizer`` (Unigram, one ``▁word`` piece per prompt word, no extra ids)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -5.0)]
    vocab += [("▁" + w, -1.0) for w in PROMPT_WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=MAX_SEQ_LEN)


def _text_encoder(tok, dim: int, seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed + 1)
    cfg = UMT5Config(
        vocab_size=len(tok),
        d_model=dim,
        d_kv=dim // 4,
        d_ff=2 * dim,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    return UMT5EncoderModel(cfg).eval()


def build_vae(
    size: str = "tiny",
    seed: int = 0,
    latents_mean: list[float] | None = None,
    latents_std: list[float] | None = None,
):
    """The Wan video VAE: 4x spatial, 4x temporal compression (``num_frames = 4k + 1``), causal in time."""
    from diffusers import AutoencoderKLWan

    s = _SIZES[size]
    z = s["latent"]
    torch.manual_seed(seed + 3)
    return AutoencoderKLWan(
        base_dim=s["base_dim"],
        z_dim=z,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[True, True],
        latents_mean=latents_mean or [0.0] * z,
        latents_std=latents_std or [1.0] * z,
        scale_factor_temporal=4,
        scale_factor_spatial=4,
    )


def build_transformer(
    size: str = "tiny", seed: int = 0, in_channels: int | None = None, init_offset: int = 4
):
    """The Wan transformer (self-attention with 3D RoPE, cross-attention to the text, AdaLN time);
    ``in_channels`` other than the latent channels for image-to-video (``wan_i2v_tiny``), initialised from
    ``seed + init_offset``."""
    from diffusers import WanTransformer3DModel

    s = _SIZES[size]
    torch.manual_seed(seed + init_offset)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=s["heads"],
        attention_head_dim=s["head_dim"],
        in_channels=in_channels or s["latent"],
        out_channels=s["latent"],
        text_dim=s["text_dim"],
        freq_dim=s["freq_dim"],
        ffn_dim=s["ffn"],
        num_layers=s["layers"],
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=256,
    )


def build_scheduler():
    """The Wan 2.1 scheduler: UniPC (bh2, order 2), flow prediction, flow sigmas shifted by 3."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=FLOW_SHIFT,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="linspace",
    )


def build_pipeline(
    seed: int = 0, trained: bool = False, size: str = "tiny", path: str | os.PathLike | None = None
):
    """A ``WanPipeline``: trained tiny weights from disk, or random ``tiny``/``medium`` weights."""
    from diffusers import DiffusionPipeline, WanPipeline

    if trained:
        return DiffusionPipeline.from_pretrained(str(path or TINY_DIR))
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, not {size!r}")
    tok = build_t5_tokenizer()
    pipe = WanPipeline(
        tokenizer=tok,
        text_encoder=_text_encoder(tok, _SIZES[size]["text_dim"], seed),
        transformer=build_transformer(size, seed),
        vae=build_vae(size, seed),
        scheduler=build_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def default_call_kwargs(size: str = "tiny") -> dict[str, Any]:
    """Keyword arguments for a fast, faithful call of the pipeline (add ``prompt`` and ``generator``)."""
    hw, frames = (FRAME_SIZE, NUM_FRAMES) if size == "tiny" else (64, 17)
    return dict(
        height=hw,
        width=hw,
        num_frames=frames,
        num_inference_steps=50,
        guidance_scale=5.0,
        negative_prompt="",
        max_sequence_length=MAX_SEQ_LEN,
        output_type="pt",
    )
