"""The one-block probe's share of a step at full scale, counted exactly on meta tensors (no weights, no GPU).

    python benchmarks/bench_probe_share_full_scale.py [--json reports/zoo/probe-share-full-scale.json]

Probe-based caches (DiCache, DBCache, FirstBlockCache) run their first block(s) at every step, so their
least compute is about W + L + (T − W − L)·c full steps (W warm-up steps, L forced last steps, c the probe's
share). This counts c for the real models' configurations (FLUX.1-dev at 1024², Wan2.1-14B at 720p × 81
frames) with torch's FlopCounterMode on meta tensors, and prints DiCache's floor at T = 50 with its authors'
warm-up (steps ≤ int(0.2·T) for FLUX, < int(0.2·T) for video) — to compare with the tiny models' measured floors.

It also prints every probe- or rule-bound cache's least compute at T = 50 in its real-scale configuration
(``floors``): DiCache (authors' warm-up, 1-block probe), DBCache (cache-dit's default F8B0 and the F1B0 the tiny
models run; 8 warm-up steps), FirstBlockCache (block 0 + all of step 0) and MagCache (its retention and max-skip
rule, the same at every scale) — whether K = 13 and K = 9 are reachable within 5 % there, so a floor measured
on a tiny model can be told apart from a tiny-model artefact.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _count(model, kwargs: dict, block: str) -> tuple[int, int, int]:
    """(FLOPs of one call, of block 0, of blocks 0-7) — ``block`` names block 0 (``…blocks.0``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        model(**kwargs)
    per = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    stem = block.rsplit(".", 1)[0]
    return fc.get_total_flops(), per[block], sum(per[f"{stem}.{i}"] for i in range(8))


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


def dit_xl_2() -> tuple[int, int, int]:
    import torch
    from diffusers import DiTTransformer2DModel

    with torch.device("meta"):
        m = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, num_layers=28,
                                  sample_size=32, patch_size=2, num_embeds_ada_norm=1000)  # fmt: skip
        kw = dict(hidden_states=torch.randn(1, 4, 32, 32), timestep=torch.ones(1, dtype=torch.long),
                  class_labels=torch.zeros(1, dtype=torch.long))  # fmt: skip
    return _count(m, kw, "DiTTransformer2DModel.transformer_blocks.0")


def dicache_floor(share: float, T: int = 50, video: bool = False, forced_last: int = 1) -> float:
    warm = int(0.2 * T) if video else int(0.2 * T) + 1
    last = 0 if video else forced_last
    return warm + last + (T - warm - last) * share


def floors(share1: float, share8: float, family: str, T: int = 50) -> dict[str, float]:
    """Least compute (full-step equivalents) of each probe- or rule-bound cache at T steps on a model whose
    block 0 is ``share1`` and blocks 0-7 ``share8`` of a step (see the module docstring)."""
    from baselines.magcache import FAMILY_DEFAULTS as MAG

    video = family in ("wan", "hunyuan-video")
    k, r = MAG[family]
    warm = round(r * T)
    return {
        "dicache": dicache_floor(share1, T, video=video),
        "dbcache-F8B0": 8 + (T - 8) * share8,
        "dbcache-F1B0": 8 + (T - 8) * share1,
        "firstblockcache": 1 + (T - 1) * share1,
        "magcache": warm + (T - warm) // (k + 1),
    }


def reachable(floor: float, budget: int) -> bool:
    """Whether a cache whose least compute is ``floor`` can be matched to ``budget`` within 5 %."""
    return floor <= budget * 1.05


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    rows = []
    models = (
        ("FLUX.1-dev 1024²", flux_dev, "flux"),
        ("Wan2.1-14B 720p×81", wan_14b, "wan"),
        ("DiT-XL/2 256²", dit_xl_2, "dit"),
    )
    for name, fn, family in models:
        total, block, first8 = fn()
        share, share8 = block / total, first8 / total
        least = floors(share, share8, family)
        rows.append({"model": name, "family": family, "step_tflops": total / 1e12, "first_block_share": share,
                     "first_8_blocks_share": share8, "dicache_floor_T50": least["dicache"],
                     "floors_T50": least,
                     "reachable_T50": {m: {str(k): reachable(f, k) for k in (13, 9)} for m, f in least.items()}})  # fmt: skip
        print(
            f"{name}: {total / 1e12:.3f} TFLOPs per transformer call, first block {100 * share:.2f} %, "
            f"first 8 blocks {100 * share8:.2f} %",
            flush=True,
        )
        for m, f in least.items():
            ok = ", ".join(f"K={k} {'reachable' if reachable(f, k) else 'out of reach'}" for k in (13, 9))
            print(f"  {m:16s} least compute K = {f:5.2f}: {ok}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
