"""The video trainer's VAE stage (``zoo_training.train_video``): reconstruction training of a video VAE and
the decoder-only fine-tune on full clips."""

from __future__ import annotations

import time
from typing import Any

import torch

from harness.zoo.video_data import sample_batch


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _posterior(vae, x: torch.Tensor):
    return vae.encode(x).latent_dist


def _reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + MSE, the digit emphasised: pixels far from the (dark) background weigh 4x."""
    w = 1.0 + 3.0 * ((x + 1) / 2).amax(1, keepdim=True).gt(0.45).float()
    return (w * ((rec - x).abs() + (rec - x) ** 2)).mean()


def _update(opt, sched, loss: torch.Tensor, params) -> None:
    """One optimiser step on ``loss`` with the gradient norm clipped to 1."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def train_vae(vae, cfg: dict[str, Any], gen: torch.Generator) -> list[float]:
    """Stage 1: reconstruction training of the video VAE; returns the loss curve (every 50 iters)."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["vae_lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["vae_lr"], total_steps=cfg["vae_iters"], pct_start=0.05
    )
    vae.train()
    curve, run = [], 0.0
    for it in range(cfg["vae_iters"]):
        # HunyuanVideo's VAE is causal and convolutional over the whole clip: 5-frame clips (1 + 4) train
        # it at half the cost; Wan's chunked feature cache needs all 9 frames
        x, _ = sample_batch(gen, cfg["vae_batch"], num_frames=cfg["vae_frames"])
        post = _posterior(vae, x)
        # near-deterministic autoencoder: a unit-variance posterior sample drowns colour and shape early on
        # (the first two training rounds collapsed every colour to orange); small noise keeps the decoder
        # robust to imperfect diffusion samples, an L2 term keeps the latent scale in check
        z = post.mean + cfg["z_noise"] * torch.randn(post.mean.shape, generator=gen)
        loss = _reconstruction_loss(vae.decode(z).sample, x)
        l2 = (post.mean**2).mean()
        _update(opt, sched, loss + cfg["latent_l2"] * l2, vae.parameters())
        run += loss.item()
        if (it + 1) % 50 == 0:
            curve.append(run / 50)
            _log(f"vae {it + 1}/{cfg['vae_iters']} rec {run / 50:.4f} l2 {l2.item():.2f}")
            run = 0.0
    vae.eval()
    return curve


def finetune_decoder(vae, cfg: dict[str, Any], seed: int) -> list[float]:
    """Decoder-only training on full ``NUM_FRAMES`` clips, the encoder (and so the latent space) frozen.

    A VAE trained on short clips (HunyuanVideo's, 5 frames) has never decoded the later latent frames of
    a 9-frame clip: their reconstructions lost colour and shape. Uses its own generator, so the stages
    before and after it draw the same data with or without it.
    """
    gen = torch.Generator().manual_seed(seed + 100)
    params = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg["decoder_lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["decoder_lr"], total_steps=cfg["decoder_iters"], pct_start=0.05
    )
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    vae.train()
    curve, run = [], 0.0
    for it in range(cfg["decoder_iters"]):
        x, _ = sample_batch(gen, cfg["vae_batch"])
        with torch.no_grad():
            mean = _posterior(vae, x).mean
        rec = vae.decode(mean + cfg["z_noise"] * torch.randn(mean.shape, generator=gen)).sample
        loss = _reconstruction_loss(rec, x)
        _update(opt, sched, loss, params)
        run += loss.item()
        if (it + 1) % 50 == 0:
            curve.append(run / 50)
            _log(f"decoder {it + 1}/{cfg['decoder_iters']} rec {run / 50:.4f}")
            run = 0.0
    vae.requires_grad_(False)
    vae.eval()
    return curve
