"""flux-tiny / flux-medium: a real FluxPipeline with tiny CLIP + T5 text encoders, built from configs.

``build_pipeline(trained=True)`` loads the pipeline trained by ``python -m zoo_training.train flux-tiny``
from ``harness/zoo/tiny/flux-tiny``; ``trained=False`` builds the same architecture with random weights
(seeded). ``size="medium"`` is a random-weight pipeline whose transformer forward takes ~0.1–0.3 s on
2 CPU cores. The scheduler is FLUX's FlowMatchEulerDiscreteScheduler with dynamic (resolution-aware)
shifting; its sequence-length range is scaled so that the tiny image (64 tokens) gets the shift FLUX
applies at 1024² (mu = 1.15, i.e. sigmas shifted by e^1.15 ≈ 3.2).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from harness.zoo.tokenizers import build_clip_tokenizer, build_t5_tokenizer
from harness.zoo.vae import build_vae

TINY_DIR = Path(__file__).parent / "tiny" / "flux-tiny"
MAX_SEQUENCE_LENGTH = 16

SIZES: dict[str, dict] = {
    # image 32×32 px → latent 16×16×4 → 64 packed tokens of 16 channels. FLUX.1's proportions (19 double :
    # 38 single) at 4 + 8 thin blocks: one block (a probe) is 8.6 % of a step's transformer FLOPs (FLUX.1-dev
    # ~2 %; the 2 + 2 blocks of width 96 before made it 25 %) at about the same FLOPs per step.
    "tiny": {
        "hidden": 56,
        "heads": 2,
        "axes": (4, 12, 12),
        "double": 4,
        "single": 8,
        "text_dim": 32,
        "height": 32,
        "seq_lo": 16,
        "seq_hi": 64,
    },
    # image 64×64 px → 256 tokens; hidden 512, 4 double + 8 single blocks (~70M params): one forward
    # takes ~0.1–0.3 s on 2 CPU cores, compute-bound enough to compare wall-clock with FLOPs speedups
    "medium": {
        "hidden": 512,
        "heads": 8,
        "axes": (16, 24, 24),
        "double": 4,
        "single": 8,
        "text_dim": 64,
        "height": 64,
        "seq_lo": 64,
        "seq_hi": 256,
    },
}


def default_height(size: str = "tiny") -> int:
    """Image height (= width) in pixels the given size is built for."""
    return SIZES[size]["height"]


def build_scheduler(size: str = "tiny") -> FlowMatchEulerDiscreteScheduler:
    """FLUX's scheduler config with the shift range mapped onto this size's token count."""
    s = SIZES[size]
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=s["seq_lo"],
        max_image_seq_len=s["seq_hi"],
        time_shift_type="exponential",
    )


def build_text_encoders(seed: int = 0, size: str = "tiny") -> dict:
    """Tokenizers and random-weight CLIP / T5 text encoders (frozen during training)."""
    dim = SIZES[size]["text_dim"]
    tok = build_clip_tokenizer(model_max_length=MAX_SEQUENCE_LENGTH)
    tok2 = build_t5_tokenizer(model_max_length=MAX_SEQUENCE_LENGTH)
    torch.manual_seed(seed + 1)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=MAX_SEQUENCE_LENGTH,
            projection_dim=dim,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    torch.manual_seed(seed + 2)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tok2),
            d_model=dim,
            d_kv=dim // 2,
            d_ff=2 * dim,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            feed_forward_proj="gated-gelu",
            decoder_start_token_id=0,
            pad_token_id=tok2.pad_token_id,
            eos_token_id=tok2.eos_token_id,
        )
    )
    return {"tokenizer": tok, "text_encoder": clip.eval(), "tokenizer_2": tok2, "text_encoder_2": t5.eval()}


def build_transformer(seed: int = 0, size: str = "tiny") -> FluxTransformer2DModel:
    """A FluxTransformer2DModel with double and single blocks, random weights from ``seed``."""
    s = SIZES[size]
    torch.manual_seed(seed + 3)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 × VAE latent channels (2×2 packing)
        num_layers=s["double"],
        num_single_layers=s["single"],
        attention_head_dim=s["hidden"] // s["heads"],
        num_attention_heads=s["heads"],
        joint_attention_dim=s["text_dim"],
        pooled_projection_dim=s["text_dim"],
        guidance_embeds=False,
        axes_dims_rope=s["axes"],
    )


def build_pipeline(
    seed: int = 0, trained: bool = False, size: str = "tiny", path: str | Path | None = None
) -> FluxPipeline:
    """The flux-tiny (or flux-medium) FluxPipeline; ``trained=True`` loads the committed weights."""
    if trained:
        if size != "tiny":
            raise ValueError("only the tiny size is trained; medium specs use random weights")
        return FluxPipeline.from_pretrained(str(path or TINY_DIR))
    pipe = FluxPipeline(
        scheduler=build_scheduler(size),
        vae=build_vae(seed, size),
        transformer=build_transformer(seed, size),
        **build_text_encoders(seed, size),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(prompt: str, size: str = "tiny", guidance_scale: float = 4.0) -> dict:
    """Pipeline kwargs for one prompt: true classifier-free guidance against the empty prompt."""
    h = default_height(size)
    return {
        "prompt": prompt,
        "negative_prompt": "",
        "true_cfg_scale": guidance_scale,
        "height": h,
        "width": h,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
    }
