"""Train the tiny video pipelines (``wan-tiny``, ``hunyuan-video-tiny``) on moving coloured digits.

Reproducible (fixed seed, fixed iteration counts, one CPU thread). ``python -m zoo_training.train NAME``
trains two components in turn, each within 30 minutes (times in ``reports/zoo/<NAME>-train.json``):

1. the VAE: the video VAE (causal 3D, 4x spatial / 4x temporal, 16 latent channels) on rendered clips as a
   near-deterministic autoencoder (posterior mean + 0.1 noise): weighted L1 + MSE + a small latent L2;
   where it trained on clips shorter than the pipeline's (HunyuanVideo: 5 of 9 frames), then its decoder
   alone on full clips (``decoder_iters``, encoder frozen); the latent statistics of ``norm_clips`` clips
   become the pipeline's normalisation (Wan: ``latents_mean``/``latents_std``, HunyuanVideo:
   ``scaling_factor``);
2. the transformer, freshly initialised, with rectified flow in the pipeline's own latent layout
   ``(B, C, F, H, W)`` on ``n_clips`` encoded clips: ``x_t = (1 - s) x_0 + s e``, target ``e - x_0``,
   timestep ``1000 s``, ``s`` drawn through the scheduler's own shift; one warm-up + cosine learning-rate
   schedule; text encoders stay frozen at their random init; 10% prompt dropout to the empty prompt (the
   negative prompt used for CFG); EMA weights are saved.

``python -m zoo_training.train NAME --component vae|transformer`` trains one component alone (the
transformer on the saved VAE); both in turn give the same weights as the single run, since each component
seeds its own generator. ``--eval-every N`` logs the EMA weights' adherence on 12 evaluation prompts.
Saves to ``harness/zoo/tiny/<NAME>/`` with ``save_pretrained(safe_serialization=True)`` and writes
``reports/zoo/<NAME>-train.json``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dpcache.atomic_io import write_text_atomic
from harness.zoo import hunyuan_tiny, wan_i2v_tiny, wan_tiny
from harness.zoo.video_data import NUM_FRAMES, all_prompts, sample_batch
from zoo_training.video_config import CONFIG
from zoo_training.video_vae import _posterior, finetune_decoder, train_vae

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "reports" / "zoo"
MODULES = {"wan-tiny": wan_tiny, "wan-i2v-tiny": wan_i2v_tiny, "hunyuan-video-tiny": hunyuan_tiny}
I2V = ("wan-i2v-tiny",)  # first-frame conditioned: trained on wan-tiny's VAE, no VAE component of its own


COMPONENTS = ("all", "vae", "transformer")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@torch.no_grad()
def encode_dataset(
    vae, n: int, gen: torch.Generator, first_frames: bool = False
) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
    """Render ``n`` clips and encode them to posterior means ``(n, C, F', H', W')``; with ``first_frames`` also
    each clip's I2V condition as ``WanImageToVideoPipeline`` builds it (the first frame in 8 bits, then zeros,
    VAE-encoded: its posterior mean), un-normalised."""
    lat, prompts, cond = [], [], []
    for i in range(0, n, 100):
        x, p = sample_batch(gen, min(100, n - i))
        lat.append(_posterior(vae, x).mean)
        prompts += p
        if first_frames:
            first = (((x[:, :, :1] + 1) * 127.5).round() / 127.5 - 1).clamp(-1, 1)  # as a PIL image
            video = torch.cat([first, torch.zeros_like(x[:, :, 1:])], dim=2)
            cond.append(_posterior(vae, video).mean)
    return torch.cat(lat), prompts, (torch.cat(cond) if first_frames else None)


def i2v_condition(cond_lat: torch.Tensor, mask_channels: int) -> torch.Tensor:
    """The 4 + 16 channels the I2V transformer is given besides the noisy latents: the frame mask (1 on the
    first latent frame, 0 after) and the normalised first-frame latents."""
    b, _, f, h, w = cond_lat.shape
    mask = torch.zeros(b, mask_channels, f, h, w)
    mask[:, :, 0] = 1.0
    return torch.cat([mask, cond_lat], dim=1)


@torch.no_grad()
def text_table(name: str, pipe) -> dict[str, tuple[torch.Tensor, ...]]:
    """Frozen text conditioning for every caption and for the empty (negative) prompt."""
    prompts = [*all_prompts(), ""]
    out: dict[str, tuple[torch.Tensor, ...]] = {}
    if name.startswith("wan"):
        emb, _ = pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, max_sequence_length=wan_tiny.MAX_SEQ_LEN
        )
        for i, p in enumerate(prompts):
            out[p] = (emb[i],)
    else:
        tmpl = hunyuan_tiny.prompt_template(pipe.tokenizer)
        emb, pooled, mask = pipe.encode_prompt(
            prompts, prompt_template=tmpl, max_sequence_length=hunyuan_tiny.LLAMA_MAX_LEN
        )
        for i, p in enumerate(prompts):
            out[p] = (emb[i], pooled[i], mask[i])
    return out


def _forward(
    name: str, tr, xt: torch.Tensor, t: torch.Tensor, cond: list[tuple[torch.Tensor, ...]]
) -> torch.Tensor:
    if name.startswith("wan"):
        emb = torch.stack([c[0] for c in cond])
        return tr(hidden_states=xt, timestep=t, encoder_hidden_states=emb, return_dict=False)[0]
    emb = torch.stack([c[0] for c in cond])
    pooled = torch.stack([c[1] for c in cond])
    mask = torch.stack([c[2] for c in cond])
    return tr(
        hidden_states=xt,
        timestep=t,
        encoder_hidden_states=emb,
        encoder_attention_mask=mask,
        pooled_projections=pooled,
        guidance=None,
        return_dict=False,
    )[0]


def train_transformer(
    name: str,
    tr,
    x0: torch.Tensor,
    prompts: list[str],
    table,
    cfg: dict[str, Any],
    gen: torch.Generator,
    shift: float,
    probe: Callable[[Any, int], None] | None = None,
    condition: torch.Tensor | None = None,
):
    """The transformer with rectified flow on normalised latents; returns (EMA transformer, loss curve).

    ``probe(ema, it)`` is called every ``cfg["eval_every"]`` iterations (0: never). ``condition`` (I2V: frame
    mask + first-frame latents per clip) is concatenated to the noisy latents along the channels, as the
    pipeline does; prompt dropout drops the text only (the first frame stays, as in Wan's I2V).
    """
    ema = copy.deepcopy(tr).eval().requires_grad_(False)
    opt = torch.optim.AdamW(tr.parameters(), lr=cfg["lr"], weight_decay=0.01)
    warm, total = cfg.get("warmup", 100), cfg["iters"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: (
            min(1.0, (i + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
        ),
    )
    tr.train()
    curve, run = [], 0.0
    n = x0.shape[0]
    for it in range(total):
        idx = torch.randint(n, (cfg["batch"],), generator=gen)
        x = x0[idx]
        drop = torch.rand(cfg["batch"], generator=gen) < cfg["drop"]
        cond = [table["" if d else prompts[int(i)]] for i, d in zip(idx, drop)]
        u = torch.rand(cfg["batch"], generator=gen)
        # half uniform in u, half logit-normal; both pushed through the sampler's shift
        ln = torch.sigmoid(torch.randn(cfg["batch"], generator=gen))
        u = torch.where(torch.rand(cfg["batch"], generator=gen) < 0.5, u, ln)
        s = shift * u / (1 + (shift - 1) * u)
        e = torch.randn(x.shape, generator=gen)
        sv = s.view(-1, 1, 1, 1, 1)
        xt = (1 - sv) * x + sv * e
        if condition is not None:
            xt = torch.cat([xt, condition[idx]], dim=1)
        pred = _forward(name, tr, xt, s * 1000.0, cond)
        loss = ((pred - (e - x)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            d = min(cfg["ema"], (1 + it) / (10 + it))
            for pe, pt in zip(ema.parameters(), tr.parameters()):
                pe.lerp_(pt, 1 - d)
        run += loss.item()
        if (it + 1) % 100 == 0:
            curve.append(run / 100)
            _log(f"{name} {it + 1}/{total} loss {run / 100:.4f} lr {sched.get_last_lr()[0]:.2e}")
            run = 0.0
        every = cfg.get("eval_every", 0)
        if probe is not None and every and (it + 1) % every == 0 and it + 1 < total:
            probe(ema, it + 1)
    return ema, curve


def adherence_probe(pipe, name: str, n: int = 12) -> dict[str, float]:
    """Digit / colour / direction adherence of ``pipe``'s 50-step samples on ``n`` held-out probe prompts
    (disjoint from the calibration and evaluation prompts: ``registry.probe_prompts``)."""
    from harness.zoo.classifier import video_adherence
    from harness.zoo.registry import probe_prompts

    mod = MODULES[name]
    kw = mod.default_call_kwargs()
    prompts = probe_prompts(name, n)
    image = (lambda p: {"image": mod.first_frame(p)}) if name in I2V else (lambda p: {})
    videos = [
        pipe(prompt=p, generator=torch.Generator().manual_seed(i), **kw, **image(p)).frames[0]
        for i, p in enumerate(prompts)
    ]
    return {k: v for k, v in video_adherence(videos, prompts).items() if k != "per_prompt"}


def _normalise(name: str, pipe, lat: torch.Tensor, fit: bool) -> tuple[torch.Tensor, float]:
    """Latents in the pipeline's normalised space and the sampler's shift; ``fit`` sets the VAE's
    normalisation from ``lat`` (VAE component), otherwise the saved one is used."""
    vae, c = pipe.vae, lat.shape[1]
    if name.startswith("wan"):
        if fit:
            mean = lat.transpose(0, 1).reshape(c, -1).mean(1)
            std = lat.transpose(0, 1).reshape(c, -1).std(1)
            vae.register_to_config(
                latents_mean=[round(float(v), 5) for v in mean],
                latents_std=[round(float(v), 5) for v in std],
            )
        mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1)
        return (lat - mean) / std, float(pipe.scheduler.config.flow_shift)
    if fit:
        vae.register_to_config(scaling_factor=round(float(1.0 / lat.std()), 5))
    return lat * vae.config.scaling_factor, float(pipe.scheduler.config.shift)


def _vae_component(name: str, cfg: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A fresh pipeline whose VAE is trained (then, where ``decoder_iters``, its decoder on full clips) and
    whose latent normalisation is fitted; its transformer is the untrained initialisation."""
    mod, seed = MODULES[name], cfg["seed"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    pipe = mod.build_pipeline(seed=seed, trained=False, size="tiny")
    _log(f"{name}: training VAE ({sum(p.numel() for p in pipe.vae.parameters())} params)")
    vae_curve = train_vae(pipe.vae, cfg, gen)
    decoder_curve: list[float] = []
    if cfg.get("decoder_iters"):  # own generator: the encoder, so every latent, does not depend on it
        _log(f"{name}: decoder fine-tune on {NUM_FRAMES}-frame clips")
        decoder_curve = finetune_decoder(pipe.vae, cfg, seed)
    lat, _, _ = encode_dataset(pipe.vae, cfg["norm_clips"], gen)
    _normalise(name, pipe, lat, fit=True)
    return pipe, {
        "vae_curve": [round(v, 5) for v in vae_curve],
        "decoder_curve": [round(v, 5) for v in decoder_curve],
    }


def _transformer_component(name: str, pipe, cfg: dict[str, Any]) -> dict[str, Any]:
    """Train a freshly initialised transformer on clips encoded by ``pipe``'s VAE (its own generator,
    seed + 1); the EMA weights replace ``pipe.transformer``."""
    mod, seed = MODULES[name], cfg["seed"]
    torch.manual_seed(seed + 1)
    gen = torch.Generator().manual_seed(seed + 1)
    tr = mod.build_transformer("tiny", seed)
    lat, prompts, cond_lat = encode_dataset(pipe.vae, cfg["n_clips"], gen, first_frames=name in I2V)
    x0, shift = _normalise(name, pipe, lat, fit=False)
    shift = cfg.get("train_shift", shift)  # the training distribution of t: the sampler's shift unless set
    condition = None
    if cond_lat is not None:
        condition = i2v_condition(_normalise(name, pipe, cond_lat, fit=False)[0], mod.MASK_CHANNELS)
    _log(f"latents {tuple(lat.shape)}; normalised std {float(x0.std()):.3f} mean {float(x0.mean()):.3f}")
    table = text_table(name, pipe)
    _log(f"{name}: training transformer ({sum(p.numel() for p in tr.parameters())} params)")
    history: list[dict[str, Any]] = []
    pipe.set_progress_bar_config(disable=True)

    def probe(ema, it: int) -> None:
        pipe.transformer = ema
        t0 = time.time()
        history.append({"iter": it, **adherence_probe(pipe, name)})
        _log(f"{name} it {it} adherence {json.dumps(history[-1])} ({time.time() - t0:.0f}s)")

    ema, curve = train_transformer(name, tr, x0, prompts, table, cfg, gen, shift, probe, condition)
    pipe.transformer = ema
    return {"loss_curve": [round(v, 5) for v in curve], "adherence_during_training": history}


def main(
    name: str,
    out_dir: str | os.PathLike | None = None,
    component: str = "all",
    record: str | os.PathLike | None = None,
    threads: int = 1,
    **overrides: Any,
) -> Path:
    """Train ``name`` (``wan-tiny`` or ``hunyuan-video-tiny``) and save the pipeline; returns its directory.

    ``component``: ``"vae"`` trains a fresh pipeline's VAE (transformer left at its initialisation),
    ``"transformer"`` a fresh transformer on the VAE saved in ``out_dir``, ``"all"`` both in turn (the
    same weights as the two runs one after the other: each component seeds its own generator).
    ``record`` is the training record, one entry per component (default ``reports/zoo/<name>-train.json``
    when saving to the committed directory, none otherwise); a component's new run replaces its entry.
    """
    if name not in MODULES:
        raise SystemExit(f"unknown video model {name!r}; choose from {sorted(MODULES)}")
    if component not in COMPONENTS:
        raise SystemExit(f"unknown component {component!r}; choose from {list(COMPONENTS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    mod = MODULES[name]
    out = Path(out_dir) if out_dir else mod.TINY_DIR
    if record is None and out_dir is None:
        record = REPORTS / f"{name}-train.json"
    cfg = {**CONFIG[name], **overrides}
    entries: dict[str, dict[str, Any]] = {}
    pipe = None
    if name in I2V and component == "vae":
        raise SystemExit(
            f"{name} has no VAE of its own (it shares wan-tiny's): train --component transformer"
        )
    if name in I2V and pipe is None and component == "all":
        component = "transformer"
    if component in ("all", "vae"):
        t0 = time.time()
        pipe, info = _vae_component(name, cfg)
        entries["vae"] = {"train_seconds": round(time.time() - t0, 1), **info}
    if component in ("all", "transformer"):
        if pipe is None and name in I2V:
            pipe = mod.build_pipeline(seed=cfg["seed"], trained=False)
        if pipe is None:
            if not (out / "model_index.json").exists():
                raise SystemExit(
                    f"--component transformer needs a trained VAE in {out}: run --component vae first"
                )
            pipe = mod.build_pipeline(trained=True, path=out)
        t0 = time.time()
        info = _transformer_component(name, pipe, cfg)
        entries["transformer"] = {"train_seconds": round(time.time() - t0, 1), **info}
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out), safe_serialization=True)
    if name in I2V and out.resolve() == mod.TINY_DIR.resolve():
        mod.link_shared(out)
    if record is not None:
        _write_record(Path(record), name, cfg, threads, entries)
    _log(f"saved {out}: " + ", ".join(f"{k} {v['train_seconds']:.0f}s" for k, v in entries.items()))
    return out


def _write_record(path: Path, name: str, cfg: dict[str, Any], threads: int, entries: dict[str, Any]) -> None:
    """Merge this run's component entries into the record at ``path`` (atomically)."""
    old = json.loads(path.read_text()) if path.exists() else {}
    components = old.get("components", {}) if old.get("name") == name else {}
    for k, v in entries.items():
        components[k] = {**v, "config": cfg, "threads": threads, "torch": torch.__version__}
    total = round(sum(c["train_seconds"] for c in components.values()), 1)
    write_text_atomic(
        path, json.dumps({"name": name, "train_seconds": total, "components": components}, indent=1)
    )
