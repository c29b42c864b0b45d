"""Tiny and medium HunyuanVideoPipeline builders (Llama + CLIP text encoders, HunyuanVideo transformer, video VAE).

``build_pipeline(trained=True)`` loads the committed ``harness/zoo/tiny/hunyuan-video-tiny/`` pipeline;
``trained=False`` builds the same architecture with random weights (``size="tiny"``) or a larger one
whose transformer forward takes ~0.1-0.3 s on 2 CPU cores (``size="medium"``, nothing committed).
Tokenizers are built here from the prompt vocabulary (BPE: ``▁word`` pieces for Llama, ``word</w>`` for
CLIP). The prompt template is short and its ``crop_start`` is computed from the tokenizer, so the
embeddings hold exactly the user prompt (see field notes: the default template assumes Llama-3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from harness.zoo.video_data import FRAME_SIZE, NUM_FRAMES, PROMPT_WORDS

NAME = "hunyuan-video-tiny"
TINY_DIR = Path(__file__).resolve().parent / "tiny" / NAME
TEMPLATE_PREFIX = "describe the video :"
LLAMA_MAX_LEN = 12  # user-prompt tokens after cropping the template
CLIP_MAX_LEN = 77  # HunyuanVideoPipeline hard-codes 77 for the CLIP tokenizer
FLOW_SHIFT = 7.0  # as the real HunyuanVideo scheduler

_SIZES: dict[str, dict[str, Any]] = {
    # HunyuanVideo's proportions (20 double : 40 single) at 4 + 8 thin blocks: a one-block probe is under
    # 10 % of a step's transformer FLOPs (2 + 2 blocks of width 64 before: ~25 %)
    "tiny": dict(
        heads=2,
        head_dim=20,
        double=4,
        single=8,
        refiner=1,
        mlp_ratio=3.0,
        latent=16,
        vae_channels=(16, 24, 24),
        text_dim=32,
    ),
    "medium": dict(
        heads=8,
        head_dim=64,
        double=1,
        single=3,
        refiner=1,
        mlp_ratio=4.0,
        latent=16,
        vae_channels=(16, 32, 32),
        text_dim=64,
    ),
}


def bpe_vocab(
    words: tuple[str, ...] | list[str], prefix: str = "", suffix: str = ""
) -> tuple[list[str], list[tuple[str, str]]]:
    """Tokens and merges of a BPE that turns each of ``words`` into one token.

    Each word is built left to right (``prefix`` + characters, ``suffix`` glued to the last one);
    every intermediate piece is a token. Returns ``(tokens, merges)``, characters first.
    """
    chars: list[str] = []
    pieces: list[str] = []
    merges: list[tuple[str, str]] = []
    for w in words:
        seq = ([prefix] if prefix else []) + list(w)
        if suffix:
            seq[-1] = seq[-1] + suffix
        for c in seq:
            if c not in chars:
                chars.append(c)
        cur = seq[0]
        for c in seq[1:]:
            if (cur, c) not in merges:
                merges.append((cur, c))
            cur = cur + c
            if cur not in pieces:
                pieces.append(cur)
    return chars + [p for p in pieces if p not in chars], merges


def _fix_merges(tok_factory, words: list[str], merges: list[tuple[str, str]], tokens: list[str]) -> Any:
    """Build a tokenizer, appending merges until every word encodes to a single token."""
    for _ in range(8):
        tok = tok_factory(merges)
        bad = False
        for w in words:
            pieces = tok.tokenize(w)
            if len(pieces) > 1:
                bad = True
                cur = pieces[0]
                for p in pieces[1:]:
                    if (cur, p) not in merges:
                        merges.append((cur, p))
                    cur = cur + p
                    if cur not in tokens:
                        raise RuntimeError(f"piece {cur!r} missing from the vocabulary")
        if not bad:
            return tok
    raise RuntimeError("could not build a BPE tokenizer that keeps every word whole")


def build_llama_tokenizer():
    """A ``LlamaTokenizer`` (BPE, ``▁word`` pieces) over the prompt words, padding on the right."""
    from transformers import LlamaTokenizer

    tokens, merges = bpe_vocab(PROMPT_WORDS, prefix="▁")
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {t: i for i, t in enumerate(specials + [t for t in tokens if t not in specials])}

    def make(m):
        return LlamaTokenizer(
            vocab=vocab,
            merges=list(m),
            padding_side="right",
            pad_token="<pad>",
            add_prefix_space=True,
            model_max_length=64,
        )

    return _fix_merges(make, list(PROMPT_WORDS), merges, list(vocab))


def build_clip_tokenizer():
    """A ``CLIPTokenizer`` (BPE with ``</w>`` word ends, merges as tuples) over the prompt words."""
    from transformers import CLIPTokenizer

    tokens, merges = bpe_vocab(PROMPT_WORDS, suffix="</w>")
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(specials + [t for t in tokens if t not in specials])}

    def make(m):
        return CLIPTokenizer(vocab=vocab, merges=list(m), model_max_length=CLIP_MAX_LEN)

    return _fix_merges(make, list(PROMPT_WORDS), merges, list(vocab))


def prompt_template(tokenizer) -> dict[str, Any]:
    """The HunyuanVideo ``prompt_template`` for the tiny Llama tokenizer, with an exact ``crop_start``."""
    crop_start = len(tokenizer(TEMPLATE_PREFIX, add_special_tokens=True).input_ids)
    return {"template": TEMPLATE_PREFIX + " {}", "crop_start": crop_start}


def _text_encoders(tok, tok2, dim: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(seed + 1)
    llama = LlamaModel(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    ).eval()
    torch.manual_seed(seed + 2)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok2),
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LEN,
            projection_dim=dim,
            bos_token_id=tok2.bos_token_id,
            eos_token_id=tok2.eos_token_id,
            pad_token_id=tok2.pad_token_id,
        )
    ).eval()
    return llama, clip


def build_vae(size: str = "tiny", seed: int = 0, scaling_factor: float = 1.0):
    """The video VAE: 4x spatial, 4x temporal compression (``num_frames = 4k + 1``), causal in time."""
    from diffusers import AutoencoderKLHunyuanVideo

    s = _SIZES[size]
    n = len(s["vae_channels"])
    torch.manual_seed(seed + 3)
    return AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=s["latent"],
        down_block_types=("HunyuanVideoDownBlock3D",) * n,
        up_block_types=("HunyuanVideoUpBlock3D",) * n,
        block_out_channels=s["vae_channels"],
        layers_per_block=1,
        norm_num_groups=8,
        scaling_factor=scaling_factor,
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
        mid_block_add_attention=False,
    )


def build_transformer(size: str = "tiny", seed: int = 0):
    """The HunyuanVideo transformer (double + single stream blocks, token refiner, no guidance embed)."""
    from diffusers import HunyuanVideoTransformer3DModel

    s = _SIZES[size]
    hd = s["head_dim"]
    axes = (hd - 2 * (hd // 3 // 2 * 2), hd // 3 // 2 * 2, hd // 3 // 2 * 2)
    torch.manual_seed(seed + 4)
    return HunyuanVideoTransformer3DModel(
        in_channels=s["latent"],
        out_channels=s["latent"],
        num_attention_heads=s["heads"],
        attention_head_dim=hd,
        num_layers=s["double"],
        num_single_layers=s["single"],
        num_refiner_layers=s["refiner"],
        mlp_ratio=s["mlp_ratio"],
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=False,
        text_embed_dim=s["text_dim"],
        pooled_projection_dim=s["text_dim"],
        rope_theta=256.0,
        rope_axes_dim=axes,
    )


def build_scheduler():
    """Flow-matching Euler with the real model's shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFT)


def build_pipeline(
    seed: int = 0, trained: bool = False, size: str = "tiny", path: str | os.PathLike | None = None
):
    """A ``HunyuanVideoPipeline``: trained tiny weights from disk, or random ``tiny``/``medium`` weights."""
    from diffusers import DiffusionPipeline, HunyuanVideoPipeline

    if trained:
        return DiffusionPipeline.from_pretrained(str(path or TINY_DIR))
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, not {size!r}")
    tok, tok2 = build_llama_tokenizer(), build_clip_tokenizer()
    llama, clip = _text_encoders(tok, tok2, _SIZES[size]["text_dim"], seed)
    pipe = HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=tok,
        transformer=build_transformer(size, seed),
        vae=build_vae(size, seed),
        scheduler=build_scheduler(),
        text_encoder_2=clip,
        tokenizer_2=tok2,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def default_call_kwargs(size: str = "tiny", tokenizer=None) -> dict[str, Any]:
    """Keyword arguments for a fast, faithful call of the pipeline (add ``prompt`` and ``generator``).

    Real classifier-free guidance (``true_cfg_scale`` with an empty negative prompt); the embedded
    ``guidance_scale`` is unused because the tiny transformer has no guidance embedding.
    """
    tok = tokenizer if tokenizer is not None else build_llama_tokenizer()
    hw, frames = (FRAME_SIZE, NUM_FRAMES) if size == "tiny" else (64, 17)
    return dict(
        height=hw,
        width=hw,
        num_frames=frames,
        num_inference_steps=50,
        true_cfg_scale=4.0,
        guidance_scale=1.0,
        negative_prompt="",
        prompt_template=prompt_template(tok),
        max_sequence_length=LLAMA_MAX_LEN,
        output_type="pt",
    )
