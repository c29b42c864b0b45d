"""Reproducible CPU training of the tiny image pipelines: ``python -m zoo_training.train NAME``.

NAME is ``vae`` (the shared AutoencoderKL, saved under ``harness/zoo/weights/vae-tiny``),
``classifier`` (the digit / colour / background reader behind prompt adherence), ``flux-tiny``
(rectified flow on the FluxPipeline's packed latents, prompt dropout for CFG, 6000 iterations) or
``dit-tiny`` (DiT's DDPM objective with v-prediction — ε did not converge in the CPU budget — and 10%
null-class dropout for CFG, 7000 iterations); ``wan-tiny`` / ``hunyuan-video-tiny`` go to
``train_video``. Both image generators train on ``digits_data.GENERATOR_SCENES``; ``--eval-every N``
logs the EMA weights' adherence on 40 evaluation prompts while training. Text encoders stay frozen
at their seeded random initialisation.
Fixed seed, fixed iteration count, one thread: rerunning gives the same weights. The
transformers keep an EMA of their weights, which is what gets saved.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.metrics import psnr_db
from harness.zoo import digits_data
from harness.zoo.vae import build_vae
from zoo_training.optim import EMA, optimise

ZOO = Path(__file__).resolve().parents[1] / "harness" / "zoo"  # the shipped zoo: tiny/ and weights/
VAE_DIR = ZOO / "weights" / "vae-tiny"
FLUX_SHIFT = float(np.exp(1.15))  # FLUX.1's shift at 1024² (mu = max_shift)
# Stage 2 (``--resume``): more iterations from the stage-1 weights on fresh scenes, a quarter of the peak lr.
STAGE2_ITERS: dict[str, int] = {"flux-tiny": 1500, "dit-tiny": 1500}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] → (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).mul(2).sub(1).contiguous()


def train_vae(seed: int = 0, iters: int = 1200, batch: int = 32, n_data: int = 12000):
    """Train the shared AutoencoderKL on digit scenes; sets scaling/shift factors from the latents."""
    torch.manual_seed(seed)
    images, _ = digits_data.sample_scenes(n_data, seed=seed + 100)
    x_all = to_tensor(images)
    vae = build_vae(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for it in range(iters):
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        x = x_all[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (it + 1) / 100) * (0.1 + 0.9 * (1 - it / iters))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 100 == 0 or it == iters - 1:
            log(f"vae it {it} loss {loss.item():.4f} kl {kl.item():.3f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(x_all[i : i + 256]).latent_dist.mean for i in range(0, 2048, 256)])
        rec = torch.cat([vae.decode(z[i : i + 256]).sample for i in range(0, 2048, 256)])
    psnr = psnr_db(rec, x_all[:2048], data_range=2.0, cap_db=None)  # images in [-1, 1]: peak-to-peak 2
    vae.register_to_config(scaling_factor=float(1.0 / z.std()), shift_factor=float(z.mean()))
    log(f"vae done: recon PSNR {psnr:.1f} dB, latent mean {z.mean():.3f} std {z.std():.3f}")
    VAE_DIR.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(VAE_DIR, safe_serialization=True)
    return vae


def load_vae(seed: int = 0):
    """The trained shared VAE: a fresh ``train vae`` output, else the copy inside a committed tiny
    pipeline (both pipelines ship the same VAE), else train it now (same seed → same weights)."""
    from diffusers import AutoencoderKL

    for d in (VAE_DIR, ZOO / "tiny" / "flux-tiny" / "vae", ZOO / "tiny" / "dit-tiny" / "vae"):
        if (d / "config.json").exists():
            return AutoencoderKL.from_pretrained(d).eval()
    train_vae(seed)
    return AutoencoderKL.from_pretrained(VAE_DIR).eval()


@torch.no_grad()
def encode_scenes(vae, n: int, seed: int, **render_kw) -> tuple[torch.Tensor, list[digits_data.Scene]]:
    """Posterior means of ``n`` fresh scenes (unscaled latents)."""
    images, scenes = digits_data.sample_scenes(n, seed=seed, **render_kw)
    x = to_tensor(images)
    z = torch.cat([vae.encode(x[i : i + 512]).latent_dist.mean for i in range(0, n, 512)])
    return z, scenes


def adherence_probe(pipe, name: str, n: int = 40) -> dict:
    """Digit (and colour) adherence of ``pipe``'s full-step samples on ``n`` held-out probe prompts (disjoint
    from the calibration and evaluation prompts: ``registry.probe_prompts``)."""
    from harness.zoo import registry
    from harness.zoo.classifier import prompt_adherence
    from zoo_training.measure import run_batch

    spec = registry.get_spec(name)
    prompts = registry.probe_prompts(spec, n)
    samples = run_batch(pipe, spec, prompts, spec.num_inference_steps, seed=1)
    asked = (
        [spec.pipeline_kwargs(p)["class_labels"][0] for p in prompts]
        if spec.input_kind == "class_label"
        else prompts
    )
    adh = prompt_adherence(samples, asked)
    return {k: v for k, v in adh.items() if k != "per_prompt"}


def _probe(pipe, ema: EMA, model, name: str, it: int, history: list) -> None:
    """Log the EMA weights' adherence during training (the pipeline is borrowed, then restored)."""
    pipe.transformer = ema.shadow
    t0 = time.time()
    adh = adherence_probe(pipe, name)
    pipe.transformer = model
    history.append({"iter": it, **adh})
    log(f"{name} it {it} adherence {json.dumps(adh)} ({time.time() - t0:.0f}s)")


def _save_ema(pipe, ema: EMA, out_dir) -> None:
    """The pipeline with its EMA transformer, saved as safetensors."""
    pipe.transformer = ema.shadow
    pipe.register_modules(transformer=ema.shadow)
    pipe.save_pretrained(out_dir, safe_serialization=True)


def train_flux(
    seed: int = 0,
    iters: int = 6000,
    batch: int = 64,
    n_data: int = 40000,
    lr: float = 1e-3,
    resume: bool = False,
    eval_every: int = 0,
    time_sampling: str = "logit-normal",
    ema_decay: float = 0.999,
    out_dir: str | Path | None = None,
) -> dict:
    """Rectified flow for flux-tiny on the pipeline's own packed latents and prompt embeddings.

    ``time_sampling``: ``"logit-normal"`` (FLUX's sigmoid of a standard normal, shifted) or ``"mixed"``
    (half of each batch uniform in t, half logit-normal, both shifted — the video models' recipe, which
    trains the low-noise end of the trajectory more).

    ``resume=True`` is the second stage: it continues from the saved pipeline's (EMA) transformer on
    fresh scenes (another data seed), with a quarter of the peak learning rate.
    """
    from harness.zoo import flux_tiny

    torch.manual_seed(seed)
    vae = load_vae(seed)
    pipe = flux_tiny.build_pipeline(seed=seed)
    pipe.vae = vae
    pipe.register_modules(vae=vae)
    if resume:
        from diffusers import FluxTransformer2DModel

        pipe.transformer = FluxTransformer2DModel.from_pretrained(flux_tiny.TINY_DIR / "transformer")
        pipe.register_modules(transformer=pipe.transformer)
        seed, lr = seed + 7, lr * 0.25
    sf, shift = vae.config.scaling_factor, vae.config.shift_factor
    z, scenes = encode_scenes(vae, n_data, seed=seed + 200, **digits_data.GENERATOR_SCENES)
    z = (z - shift) * sf
    b, c, h, w = z.shape
    packed = pipe._pack_latents(z, b, c, h, w)
    img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    prompts = [*sorted({s.prompt for s in scenes}), ""]
    with torch.no_grad():
        pe, pooled, txt_ids = pipe.encode_prompt(
            prompts, prompt_2=None, max_sequence_length=flux_tiny.MAX_SEQUENCE_LENGTH
        )
    pidx = torch.tensor([prompts.index(s.prompt) for s in scenes])
    null = len(prompts) - 1
    model = pipe.transformer.train()
    ema = EMA(model, ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    t0, losses, history = time.time(), [], []
    for it in range(iters):
        if eval_every and it and it % eval_every == 0:
            _probe(pipe, ema, model, "flux-tiny", it, history)
        idx = torch.randint(0, b, (batch,), generator=g)
        x0 = packed[idx]
        p = pidx[idx].clone()
        p[torch.rand(batch, generator=g) < 0.1] = null
        t = torch.sigmoid(torch.randn(batch, generator=g))
        if time_sampling == "mixed":
            u = torch.rand(batch, generator=g)
            t = torch.where(torch.rand(batch, generator=g) < 0.5, u, t)
        sigma = FLUX_SHIFT * t / (1 + (FLUX_SHIFT - 1) * t)
        noise = torch.randn(x0.shape, generator=g)
        xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        out = model(
            hidden_states=xt,
            timestep=sigma,
            pooled_projections=pooled[p],
            encoder_hidden_states=pe[p],
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        loss = F.mse_loss(out, noise - x0)
        losses.append(optimise(opt, loss, model, ema, it, iters, lr))
        if it % 100 == 0 or it == iters - 1:
            log(f"flux it {it} loss {np.mean(losses[-100:]):.4f} ({time.time() - t0:.0f}s)")
    _save_ema(pipe, ema, out_dir or flux_tiny.TINY_DIR)
    return {
        "train_seconds": time.time() - t0,
        "iters": iters,
        "batch": batch,
        "peak_lr": lr,
        "time_sampling": time_sampling,
        "ema_decay": ema_decay,
        "final_loss": float(np.mean(losses[-200:])),
        "adherence_during_training": history,
    }


def train_dit(
    seed: int = 0,
    iters: int = 7000,
    batch: int = 64,
    n_data: int = 40000,
    lr: float = 1e-3,
    resume: bool = False,
    eval_every: int = 0,
    out_dir: str | Path | None = None,
) -> dict:
    """DiT's DDPM objective (v-prediction, see dit_tiny.PREDICTION_TYPE) on labels 0–9, 10% null-class dropout.

    ``resume=True`` continues from the saved pipeline's (EMA) transformer, as for flux-tiny.
    """
    from harness.zoo import dit_tiny

    torch.manual_seed(seed)
    vae = load_vae(seed)
    pipe = dit_tiny.build_pipeline(seed=seed)
    pipe.vae = vae
    pipe.register_modules(vae=vae)
    if resume:
        from diffusers import DiTTransformer2DModel

        pipe.transformer = DiTTransformer2DModel.from_pretrained(dit_tiny.TINY_DIR / "transformer")
        pipe.register_modules(transformer=pipe.transformer)
        seed, lr = seed + 7, lr * 0.25
    z, scenes = encode_scenes(vae, n_data, seed=seed + 300, **digits_data.GENERATOR_SCENES)
    z = z * vae.config.scaling_factor
    labels = torch.tensor([s.digit for s in scenes])
    ac = pipe.scheduler.alphas_cumprod.float()
    v_pred = pipe.scheduler.config.prediction_type == "v_prediction"
    model = pipe.transformer.train()
    ema = EMA(model, 0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    t0, losses, history = time.time(), [], []
    for it in range(iters):
        if eval_every and it and it % eval_every == 0:
            _probe(pipe, ema, model, "dit-tiny", it, history)
        idx = torch.randint(0, len(z), (batch,), generator=g)
        x0 = z[idx]
        y = labels[idx].clone()
        y[torch.rand(batch, generator=g) < 0.1] = dit_tiny.NULL_CLASS
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = ac[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        out = model(xt, timestep=t, class_labels=y).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if v_pred else noise
        loss = F.mse_loss(out[:, :4], target)
        losses.append(optimise(opt, loss, model, ema, it, iters, lr))
        if it % 100 == 0 or it == iters - 1:
            log(f"dit it {it} loss {np.mean(losses[-100:]):.4f} ({time.time() - t0:.0f}s)")
    _save_ema(pipe, ema, out_dir or dit_tiny.TINY_DIR)
    return {
        "train_seconds": time.time() - t0,
        "iters": iters,
        "batch": batch,
        "peak_lr": lr,
        "final_loss": float(np.mean(losses[-200:])),
        "adherence_during_training": history,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "name",
        choices=[
            "vae",
            "flux-tiny",
            "dit-tiny",
            "classifier",
            "wan-tiny",
            "wan-i2v-tiny",
            "hunyuan-video-tiny",
        ],
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--iters", type=int, default=None, help="override the fixed iteration count (smoke tests)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--resume",
        action="store_true",
        help=f"image models: second stage, continue from the saved pipeline ({STAGE2_ITERS} iterations unless --iters)",
    )
    ap.add_argument(
        "--component",
        choices=["all", "vae", "transformer"],
        default="all",
        help="video models: train one component alone (transformer: on the saved VAE)",
    )
    ap.add_argument(
        "--eval-every", type=int, default=0, help="log the EMA weights' adherence every N iterations"
    )
    ap.add_argument(
        "--time-sampling",
        choices=["logit-normal", "mixed"],
        default="logit-normal",
        help="flux-tiny: training distribution of t (default: logit-normal)",
    )
    ap.add_argument("--ema", type=float, default=0.999, help="flux-tiny: EMA decay (default: 0.999)")
    ap.add_argument(
        "--out-dir",
        default=None,
        help="image models: save the pipeline here instead of harness/zoo/tiny/NAME",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.name in ("wan-tiny", "wan-i2v-tiny", "hunyuan-video-tiny"):
        from zoo_training.train_video import main as train_video_main

        over = {"eval_every": args.eval_every} | ({"iters": args.iters} if args.iters else {})
        if args.resume:
            ap.error("--resume applies to the image models; video models train --component vae|transformer")
        train_video_main(args.name, component=args.component, threads=args.threads, **over)
        return
    if args.component != "all":
        ap.error("--component applies to the video models (wan-tiny, wan-i2v-tiny, hunyuan-video-tiny) only")
    if args.resume and args.name not in STAGE2_ITERS:
        ap.error(f"--resume applies to {sorted(STAGE2_ITERS)} only")
    kw = {"seed": args.seed} | ({"iters": args.iters} if args.iters else {})
    gen_kw = {"resume": args.resume, "eval_every": args.eval_every, "out_dir": args.out_dir}
    if args.name == "flux-tiny":
        gen_kw |= {"time_sampling": args.time_sampling, "ema_decay": args.ema}
    if args.resume and not args.iters:
        kw["iters"] = STAGE2_ITERS[args.name]
    t0 = time.time()
    if args.name == "vae":
        train_vae(**kw)
        info: dict = {}
    elif args.name in ("flux-tiny", "dit-tiny"):
        info = (train_flux if args.name == "flux-tiny" else train_dit)(**kw, **gen_kw)
        info["stage"] = 2 if args.resume else 1
    else:
        from zoo_training.train_classifier import train_classifier

        info = train_classifier(**kw)
    info["wall_seconds"] = time.time() - t0
    log(f"{args.name} done: {json.dumps(info)}")
    suffix = "-stage2" if getattr(args, "resume", False) else ""
    report = ZOO.parent.parent / "reports" / "zoo" / f"train-{args.name}{suffix}.json"
    if args.out_dir:
        report = Path(args.out_dir) / "train.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
