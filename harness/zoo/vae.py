"""The small AutoencoderKL shared by the tiny image pipelines (scale factor 2, 4 latent channels)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

VAE_CONFIGS: dict[str, dict] = {
    "tiny": {"block_out_channels": (32, 32), "norm_num_groups": 16},
    "medium": {"block_out_channels": (32, 64), "norm_num_groups": 16},
}


def build_vae(
    seed: int = 0, size: str = "tiny", scaling_factor: float = 1.0, shift_factor: float = 0.0
) -> AutoencoderKL:
    """A two-level AutoencoderKL (32×32 RGB → 16×16×4), random weights from ``seed``."""
    cfg = VAE_CONFIGS[size]
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=cfg["block_out_channels"],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=cfg["norm_num_groups"],
        sample_size=32,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        force_upcast=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )
