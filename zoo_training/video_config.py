"""The video trainer's fixed schedules (``zoo_training.train_video``): one dict of settings per model."""

from __future__ import annotations

from typing import Any

# fixed schedules; the measured time of every component is in reports/zoo/<name>-train.json
CONFIG: dict[str, dict[str, Any]] = {
    # Wan's VAE decodes 4-frame chunks through a feature cache: it must train on full 9-frame clips
    "wan-tiny": dict(
        seed=0,
        vae_iters=2400,
        vae_batch=3,
        vae_frames=9,
        vae_lr=3e-3,
        z_noise=0.1,
        latent_l2=1e-3,
        norm_clips=6000,
        n_clips=12000,
        iters=9000,  # the 12-block model: 9000 fit 30 min on one thread (12500 for the 4-block one)
        batch=32,
        lr=2e-3,
        warmup=300,
        drop=0.1,
        ema=0.998,
    ),
    # first-frame conditioned (shares wan-tiny's VAE): the transformer only; 6000 iterations + encoding fit 30 min on
    # one thread with the second core busy
    "wan-i2v-tiny": dict(
        seed=0,
        n_clips=12000,
        iters=6000,
        batch=32,
        lr=2e-3,
        warmup=300,
        drop=0.1,
        ema=0.998,
    ),
    "hunyuan-video-tiny": dict(
        seed=0,
        vae_iters=3000,
        vae_batch=4,
        vae_frames=5,
        vae_lr=3e-3,
        decoder_iters=1500,
        decoder_lr=1e-3,
        z_noise=0.1,
        latent_l2=1e-3,
        norm_clips=6000,
        n_clips=12000,
        iters=9000,  # the 4 + 8-block model (15000 for the 2 + 2-block one)
        batch=32,
        lr=2e-3,
        warmup=300,
        drop=0.1,
        ema=0.998,
    ),
}
