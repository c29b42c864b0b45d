"""The one-block probe's share of a step at full scale, counted exactly on meta tensors (no weights, no GPU).

    python benchmarks/bench_probe_share_full_scale.py [--json reports/zoo/probe-share-full-scale.json]

Probe-based caches (DiCache, DBCache, FirstBlockCache) run their first block(s) at every step, so their
least compute is about W + L + (T − W − L)·c full steps (W warm-up steps, L forced last steps, c the probe's
share). This counts c for the real models' configurations (FLUX.1-dev at 1024², Wan2.1-14B at 720p × 81
frames) with torch's FlopCounterMode on meta tensors, and prints DiCache's floor at T = 50 with its authors'
warm-up (steps ≤ int(0.2·T) for FLUX, < int(0.2·T) for video) — to compare with the tiny models' measured floors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _count(model, kwargs: dict, block: str) -> tuple[int, int]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        model(**kwargs)
    per = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    return fc.get_total_flops(), per[block]


def flux_dev() -> tuple[int, int]:
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        m = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])  # fmt: skip
        kw = dict(hidden_states=torch.randn(1, 4096, 64), encoder_hidden_states=torch.randn(1, 512, 4096),
                  pooled_projections=torch.randn(1, 768), timestep=torch.ones(1), guidance=torch.ones(1))  # fmt: skip
    kw |= dict(img_ids=torch.zeros(4096, 3), txt_ids=torch.zeros(512, 3))
    return _count(m, kw, "FluxTransformer2DModel.transformer_blocks.0")


def wan_14b() -> tuple[int, int]:
    import torch
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128,
                                  in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824,
                                  num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads")  # fmt: skip
        kw = dict(hidden_states=torch.randn(1, 16, 21, 90, 160), timestep=torch.ones(1),
                  encoder_hidden_states=torch.randn(1, 512, 4096))  # fmt: skip
    return _count(m, kw, "WanTransformer3DModel.blocks.0")


def dicache_floor(share: float, T: int = 50, video: bool = False, forced_last: int = 1) -> float:
    warm = int(0.2 * T) if video else int(0.2 * T) + 1
    last = 0 if video else forced_last
    return warm + last + (T - warm - last) * share


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    rows = []
    for name, fn, video in (("FLUX.1-dev 1024²", flux_dev, False), ("Wan2.1-14B 720p×81", wan_14b, True)):
        total, block = fn()
        share = block / total
        rows.append({"model": name, "step_tflops": total / 1e12, "first_block_share": share,
                     "dicache_floor_T50": dicache_floor(share, video=video)})  # fmt: skip
        print(
            f"{name}: {total / 1e12:.1f} TFLOPs per transformer call, first block {100 * share:.2f} %, "
            f"DiCache floor at T = 50: K = {rows[-1]['dicache_floor_T50']:.2f}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
