"""The authors' DiT model class (facebookresearch/DiT's `models.DiT`, as vendored by TaylorSeer-DiT / DiT-ToCa) with dit-tiny's weights, driven by our DiTPipeline.

The authors' DiT caches (Shenyi-Z/TaylorSeer `TaylorSeer-DiT`, Shenyi-Z/ToCa `DiT-ToCa`) are written into their
copy of the official `models.py` (`DiT.forward(x, t, current, cache_dic, y)`, `DiTBlock.forward(x, c, current,
cache_dic)`), driven by their `gaussian_diffusion` loops (`current['step']` counts down from T − 1 to 0). This module
builds that class from the fetched source at run time (nothing of it is copied into the repository), loads
dit-tiny's diffusers weights into it (the inverse of diffusers' `scripts/convert_dit_to_diffusers.py`: q / k / v ->
`qkv`, `to_out.0` -> `proj`, `ff.net.0.proj` / `ff.net.2` -> `mlp.fc1` / `fc2`, `norm1.linear` ->
`adaLN_modulation.1`, `proj_out_1` / `proj_out_2` -> the final layer) and installs a wrapper with
`DiTTransformer2DModel`'s call signature on our pipeline's transformer, so the same DiTPipeline loop (labels, null
class 1000, seeds, DDIM, CFG on the batched output) drives their model; each call sets `current['step']` as
their loop does.

Adapted to our model, not to their method (stated so the check can be judged):
* conditioning: diffusers' DiT keeps a timestep / label embedder per block (`norm1.emb`; the converter copies the
  official one into each) and projects time with `downscale_freq_shift=1`; dit-tiny was trained so, with distinct
  embedders per block. Their `t_embedder` / `y_embedder` are therefore our block 0's (so `c` equals the conditioning
  diffusers' final layer uses), and every other block's `adaLN_modulation` (their Linear, our weights) reads its
  own block's conditioning of the same (t, y). Their blocks, attention, MLP, caches, final layer and unpatchify run
  as released.
* the MLP's LayerNorm eps: diffusers' `norm3` uses the model's `norm_eps` (1e-5), the official `norm2` 1e-6;
  set to ours.
* `timm` (their `PatchEmbed`, `Mlp`, `use_fused_attn`) needs torchvision, which this environment lacks; without
  timm a stand-in with the same arithmetic is used (`_timm_stand_in`: conv patchify + flatten, fc1 -> GELU(tanh) ->
  fc2, fused SDPA), as `wan_official` stands in SDPA for flash-attn.
* CFG: their `forward_with_cfg` guides 3 of 4 channels (DiT's reproducibility quirk); our pipeline guides all 4.
  That is the sampler, not the cache: their `forward` is driven, our pipeline guides, for both sides.

Run ``python -m benchmarks.fidelity.dit_official --authors-src /work/.mirror/Shenyi-Z+TaylorSeer/repo`` to print
the uncached check (their model with caching off vs our transformer, same pipeline and seeds).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .common import (
    AuthorsSource,
    AuthorsSourceMissing,
    Comparison,
    ComputeTrace,
    Model,
    Pair,
    materialize,
    traced,
)

# top-level module names the authors' DiT folders import each other by (TaylorSeer-DiT and DiT-ToCa share them)
_TOP = ("models", "cache_functions", "taylor_utils", "diffusion", "download", "timm")


def _timm_stand_in() -> dict[str, types.ModuleType]:
    """`timm.models.vision_transformer.PatchEmbed` / `Mlp` and `timm.layers.use_fused_attn` with timm's arithmetic
    for the arguments DiT passes (no norm, flatten, dropout 0)."""
    from torch import nn

    class PatchEmbed(nn.Module):
        def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, bias=True, **_: Any):
            super().__init__()
            self.patch_size = (patch_size, patch_size)
            self.img_size = (img_size, img_size)
            self.num_patches = (img_size // patch_size) ** 2
            self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=bias)
            self.norm = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.proj(x).flatten(2).transpose(1, 2))

    class Mlp(nn.Module):
        def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
            super().__init__()
            hidden, out = hidden_features or in_features, out_features or in_features
            self.fc1, self.act, self.drop1 = nn.Linear(in_features, hidden), act_layer(), nn.Dropout(drop)
            self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, out), nn.Dropout(drop)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))

    timm, models, vit, layers = (types.ModuleType(n) for n in ("timm", "timm.models", "vt", "timm.layers"))
    vit.PatchEmbed, vit.Mlp = PatchEmbed, Mlp
    layers.use_fused_attn = lambda *a, **k: True
    timm.models, timm.layers, models.vision_transformer = models, layers, vit
    return {
        "timm": timm,
        "timm.models": models,
        "timm.models.vision_transformer": vit,
        "timm.layers": layers,
    }


def load_dit_modules(src: AuthorsSource, subdir: str, names: tuple[str, ...]) -> dict[str, types.ModuleType]:
    """The authors' `subdir` modules `names` (e.g. `models`, `cache_functions`), imported by their top-level names
    from a temporary copy; sys.modules / sys.path restored afterwards (the modules keep their globals), so two
    authors' folders with the same module names load side by side."""
    root = materialize(src, subdir)
    if not (root / "models.py").is_file():
        raise AuthorsSourceMissing(f"{src.repo}: no {subdir}/models.py")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _TOP}
    for k in saved:
        del sys.modules[k]
    try:
        import timm  # noqa: F401

        sys.modules.update({k: v for k, v in saved.items() if k.split(".")[0] == "timm"})
    except ImportError:
        sys.modules.update(_timm_stand_in())
    sys.path.insert(0, str(root))
    try:
        return {n: importlib.import_module(n) for n in names}
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k.split(".")[0] in _TOP]:
            del sys.modules[k]
        sys.modules.update(saved)


class _Recorded(torch.nn.Module):
    """Their `t_embedder` / `y_embedder` slot: our block 0's embedder, recording its input for the other blocks."""

    def __init__(self, fn: Callable, holder: dict, key: str) -> None:
        super().__init__()
        self.fn, self.holder, self.key = fn, holder, key

    def forward(self, value: torch.Tensor, *args: Any) -> torch.Tensor:
        self.holder[self.key] = value
        return self.fn(value)


class _OwnConditioning(torch.nn.Module):
    """A block's `adaLN_modulation` (their SiLU + Linear) fed with that block's own conditioning of (t, y)."""

    def __init__(self, modulation: torch.nn.Module, emb: torch.nn.Module, holder: dict) -> None:
        super().__init__()
        self.modulation, self.emb, self.holder = modulation, emb, holder

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        own = self.emb(self.holder["t"], self.holder["y"], hidden_dtype=c.dtype)
        return self.modulation(own)


def official_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """dit-tiny's weights under the official DiT names (block 0's embedders as the shared ones)."""
    sd = transformer.state_dict()
    out = {
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "pos_embed": transformer.pos_embed.pos_embed.detach().clone(),
        "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
        "final_layer.linear.weight": sd["proj_out_2.weight"],
        "final_layer.linear.bias": sd["proj_out_2.bias"],
    }
    emb = "transformer_blocks.0.norm1.emb."
    out["t_embedder.mlp.0.weight"] = sd[emb + "timestep_embedder.linear_1.weight"]
    out["t_embedder.mlp.0.bias"] = sd[emb + "timestep_embedder.linear_1.bias"]
    out["t_embedder.mlp.2.weight"] = sd[emb + "timestep_embedder.linear_2.weight"]
    out["t_embedder.mlp.2.bias"] = sd[emb + "timestep_embedder.linear_2.bias"]
    out["y_embedder.embedding_table.weight"] = sd[emb + "class_embedder.embedding_table.weight"]
    for i in range(len(transformer.transformer_blocks)):
        d, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            out[o + f"attn.qkv.{p}"] = torch.cat([sd[d + f"attn1.to_{x}.{p}"] for x in "qkv"])
            out[o + f"attn.proj.{p}"] = sd[d + f"attn1.to_out.0.{p}"]
            out[o + f"mlp.fc1.{p}"] = sd[d + f"ff.net.0.proj.{p}"]
            out[o + f"mlp.fc2.{p}"] = sd[d + f"ff.net.2.{p}"]
            out[o + f"adaLN_modulation.1.{p}"] = sd[d + f"norm1.linear.{p}"]
    return out


def build_official(models: types.ModuleType, transformer: torch.nn.Module) -> torch.nn.Module:
    """Their `DiT` with the architecture and weights of a diffusers DiTTransformer2DModel (strict load), the
    conditioning and eps adapted as the module docstring says."""
    c = transformer.config
    hidden = c.num_attention_heads * c.attention_head_dim
    block0 = transformer.transformer_blocks[0]
    official = models.DiT(
        input_size=c.sample_size,
        patch_size=c.patch_size,
        in_channels=c.in_channels,
        hidden_size=hidden,
        depth=c.num_layers,
        num_heads=c.num_attention_heads,
        mlp_ratio=block0.ff.net[0].proj.out_features / hidden,
        class_dropout_prob=0.1
        if block0.norm1.emb.class_embedder.embedding_table.num_embeddings > 1000
        else 0,
        num_classes=c.num_embeds_ada_norm,
        learn_sigma=c.out_channels == 2 * c.in_channels,
    )
    official.load_state_dict(official_state_dict(transformer), strict=True)
    holder: dict[str, torch.Tensor] = {}
    emb0 = block0.norm1.emb
    official.t_embedder = _Recorded(lambda t: emb0.timestep_embedder(emb0.time_proj(t)), holder, "t")
    official.y_embedder = _Recorded(emb0.class_embedder, holder, "y")
    for i, (blk, ours) in enumerate(zip(official.blocks, transformer.transformer_blocks, strict=True)):
        blk.norm2.eps = ours.norm3.eps
        if i:
            blk.adaLN_modulation = _OwnConditioning(blk.adaLN_modulation, ours.norm1.emb, holder)
    return official.eval().requires_grad_(False)


def off_state(cache_init: Callable, steps: int, **kwargs: Any) -> tuple[dict, dict]:
    """TaylorSeer-DiT's `cache_init` with caching off: interval 1 (every step 'full'), order 0."""
    return cache_init({"interval": 1, "max_order": 0, "test_FLOPs": False, **kwargs}, steps)


@contextmanager
def driving(model: Model, official: torch.nn.Module, cache_dic: dict, current: dict) -> Iterator[None]:
    """Within: our pipeline's transformer calls run `official.forward(x, t, current, cache_dic, y)`, call k with
    `current['step'] = T − 1 − k` as their `ddim_sample_loop_progressive` sets it (T = `current['num_steps']`)."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    tr, calls = model.pipe.transformer, [0]

    def forward(
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        cross_attention_kwargs: dict | None = None,
        return_dict: bool = True,
    ):
        current["step"] = current["num_steps"] - 1 - calls[0]
        calls[0] += 1
        t = timestep.reshape(-1).expand(hidden_states.shape[0])
        out = official(hidden_states, t, current=current, cache_dic=cache_dic, y=class_labels)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    tr.forward = forward
    try:
        yield
    finally:
        del tr.forward


class OfficialTrace(ComputeTrace):
    """`ComputeTrace` for their DiT: a call computed if its last block's `qkv` projection fired."""

    def __init__(self, official: torch.nn.Module) -> None:
        self.calls: list[bool] = []
        self._h = [
            official.register_forward_pre_hook(lambda *a: self.calls.append(False)),
            official.blocks[-1].attn.qkv.register_forward_hook(self._hit),
        ]


def uncached_difference(
    model: Model, official: torch.nn.Module, cache_init: Callable, prompt: Any, seed: int, steps: int
) -> float:
    """max |image of our transformer − image of their model with caching off|, same pipeline and seed."""
    ours = model.sample(prompt, seed, steps)
    with driving(model, official, *off_state(cache_init, steps)):
        theirs = model.sample(prompt, seed, steps)
    return float((ours - theirs).abs().max())


def compare_dit(
    model: Model,
    official: torch.nn.Module,
    pair: Pair,
    steps: int,
    prompt: Any,
    seed: int,
    theirs_state: Callable[[], tuple[dict, dict]],
    floor: float | None = None,
    note: str = "",
) -> Comparison:
    """Sample `prompt` with our port (`pair.apply` on our transformer) and with their DiT driven from a fresh
    `theirs_state()` = (cache_dic, current); images, computed steps (CFG is batched: one call per step), floor."""

    def ours() -> torch.Tensor:
        pair.apply()
        try:
            return model.sample(prompt, seed, steps)
        finally:
            pair.remove()

    a, ta = traced(model, ours)
    tb = OfficialTrace(official)
    try:
        with driving(model, official, *theirs_state()):
            b = model.sample(prompt, seed, steps)
    finally:
        tb.close()
    extra = dict(pair.extra)
    if floor is not None:
        extra["uncached_max_abs"] = floor
    return Comparison.of(pair, model, steps, prompt, seed, a, b, ta.steps(1), tb.steps(1), note, extra)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--authors-src", required=True, help="Shenyi-Z/TaylorSeer checkout or git dir")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--prompts", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from .common import authors_source, load_model

    src = authors_source(args.authors_src, "Shenyi-Z/TaylorSeer")
    mods = load_dit_modules(src, "TaylorSeer-DiT", ("models", "cache_functions"))
    model = load_model("dit-tiny")
    official = build_official(mods["models"], model.pipe.transformer)
    for i, prompt in enumerate(model.spec.evaluation_prompts[: args.prompts]):
        d = uncached_difference(model, official, mods["cache_functions"].cache_init, prompt, i, args.steps)
        print(
            f"{src.repo} @ {src.commit()[:7]} DiT, T = {args.steps}, prompt {prompt!r}: uncached max|d| = {d:.2e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
