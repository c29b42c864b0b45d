"""The authors' BFL-style FLUX model (Shenyi-Z/TaylorSeer's `flux` package, loaded at run time) driven by our FluxPipeline.

TaylorSeer's ToCa and Δ-DiT code for FLUX lives in its copy of BFL's `flux` package (`flux.model.Flux`, fused
`qkv` / `linear1` weights, the cache logic inside `DoubleStreamBlock` / `SingleStreamBlock.forward`), not in
diffusers. This module builds that `Flux` class from the fetched repository (a temporary copy outside ours, never
committed), loads flux-tiny's diffusers weights into it (`bfl_state_dict`: the exact inverse of diffusers'
`convert_flux_transformer_checkpoint_to_diffusers`) and puts it behind the diffusers transformer's call signature
(`BFLFlux`), so the same FluxPipeline — prompts, seeds, scheduler, CFG — drives the authors' cached forward, with
their `cache_init` (its mode line switched as the authors switch it) and the per-step `current` of their
`denoise_cache` loop, one cache state per CFG branch.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .common import (
    AuthorsSource,
    AuthorsSourceMissing,
    Comparison,
    ComputeTrace,
    Model,
    materialize,
    psnr,
    traced,
)

REPO = "Shenyi-Z/TaylorSeer"
SUBDIR = "TaylorSeer-FLUX/src/flux"
CACHE_INIT = f"{SUBDIR}/modules/cache_functions/cache_init.py"
MODE_LINE = (
    "mode = 'Taylor'"  # the line the authors edit to pick a mode ('original', 'ToCa', 'Taylor', 'Delta')
)


def bfl_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """flux-tiny's diffusers weights in BFL's `Flux` layout (the inverse of diffusers' BFL → diffusers conversion:
    q / k / v (and the single blocks' MLP input) concatenated into `qkv` / `linear1`, the final AdaLN's
    (scale, shift) rows swapped back to BFL's (shift, scale))."""
    sd = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    out: dict[str, torch.Tensor] = {}

    def lin(dst: str, src: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = sd.pop(f"{src}.weight"), sd.pop(f"{src}.bias")

    def cat(dst: str, srcs: list[str]) -> None:
        for p in ("weight", "bias"):
            out[f"{dst}.{p}"] = torch.cat([sd.pop(f"{s}.{p}") for s in srcs], dim=0)

    lin("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    lin("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    lin("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    lin("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if "time_text_embed.guidance_embedder.linear_1.weight" in sd:
        lin("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        lin("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    lin("txt_in", "context_embedder")
    lin("img_in", "x_embedder")
    for i in range(len(transformer.transformer_blocks)):
        d, b = f"double_blocks.{i}", f"transformer_blocks.{i}"
        lin(f"{d}.img_mod.lin", f"{b}.norm1.linear")
        lin(f"{d}.txt_mod.lin", f"{b}.norm1_context.linear")
        cat(f"{d}.img_attn.qkv", [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v"])
        cat(f"{d}.txt_attn.qkv", [f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj"])
        for dst, src in (
            ("img_attn.norm.query_norm", "norm_q"),
            ("img_attn.norm.key_norm", "norm_k"),
            ("txt_attn.norm.query_norm", "norm_added_q"),
            ("txt_attn.norm.key_norm", "norm_added_k"),
        ):
            out[f"{d}.{dst}.scale"] = sd.pop(f"{b}.attn.{src}.weight")
        lin(f"{d}.img_mlp.0", f"{b}.ff.net.0.proj")
        lin(f"{d}.img_mlp.2", f"{b}.ff.net.2")
        lin(f"{d}.txt_mlp.0", f"{b}.ff_context.net.0.proj")
        lin(f"{d}.txt_mlp.2", f"{b}.ff_context.net.2")
        lin(f"{d}.img_attn.proj", f"{b}.attn.to_out.0")
        lin(f"{d}.txt_attn.proj", f"{b}.attn.to_add_out")
    for i in range(len(transformer.single_transformer_blocks)):
        s, b = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        lin(f"{s}.modulation.lin", f"{b}.norm.linear")
        cat(f"{s}.linear1", [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp"])
        out[f"{s}.norm.query_norm.scale"] = sd.pop(f"{b}.attn.norm_q.weight")
        out[f"{s}.norm.key_norm.scale"] = sd.pop(f"{b}.attn.norm_k.weight")
        lin(f"{s}.linear2", f"{b}.proj_out")
    lin("final_layer.linear", "proj_out")
    for p in ("weight", "bias"):
        scale, shift = sd.pop(f"norm_out.linear.{p}").chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift, scale], dim=0)
    if sd:
        raise ValueError(f"diffusers weights with no BFL counterpart: {sorted(sd)}")
    return out


def flux_params(transformer: torch.nn.Module) -> dict[str, Any]:
    """BFL `FluxParams` fields of a diffusers FluxTransformer2DModel."""
    c = transformer.config
    block = transformer.transformer_blocks[0]
    hidden = transformer.inner_dim
    return dict(
        in_channels=c.in_channels,
        out_channels=transformer.out_channels,
        vec_in_dim=c.pooled_projection_dim,
        context_in_dim=c.joint_attention_dim,
        hidden_size=hidden,
        mlp_ratio=block.ff.net[0].proj.out_features / hidden,
        num_heads=c.num_attention_heads,
        depth=len(transformer.transformer_blocks),
        depth_single_blocks=len(transformer.single_transformer_blocks),
        axes_dim=list(c.axes_dims_rope),
        theta=transformer.pos_embed.theta,
        qkv_bias=block.attn.to_q.bias is not None,
        guidance_embed=bool(c.guidance_embeds),
    )


@dataclass
class AuthorsFlux:
    """The authors' `flux` package, imported from a temporary copy: the model class and their `cache_init`."""

    module: types.ModuleType  # flux.model
    source: AuthorsSource

    def build(self, transformer: torch.nn.Module) -> torch.nn.Module:
        """Their `Flux` with `transformer`'s weights (and their ToCa `mlp_in`, split from `linear1` as their
        `load_mlp_in_weights` does), float32, eval mode."""
        flux = self.module.Flux(self.module.FluxParams(**flux_params(transformer)))
        sd = bfl_state_dict(transformer)
        for i, block in enumerate(flux.single_blocks):
            w, b = sd[f"single_blocks.{i}.linear1.weight"], sd[f"single_blocks.{i}.linear1.bias"]
            sd[f"single_blocks.{i}.mlp_in.weight"] = w[3 * block.hidden_size :].clone()
            sd[f"single_blocks.{i}.mlp_in.bias"] = b[3 * block.hidden_size :].clone()
        flux.load_state_dict(sd, strict=True)
        return flux.to(dtype=transformer.dtype).eval().requires_grad_(False)

    def cache_init(self, mode: str) -> Callable:
        """Their `cache_init` with its mode line set to `mode` (the file hard-codes 'Taylor'; the authors pick a
        mode by editing that line)."""
        text = self.source.read(CACHE_INIT)
        if text.count(MODE_LINE) != 1 or f"mode == '{mode}'" not in text:
            raise AuthorsSourceMissing(f"{CACHE_INIT}: no single {MODE_LINE!r} line or no {mode!r} branch")
        namespace: dict[str, Any] = {"__name__": "authors:cache_init"}
        exec(compile(text.replace(MODE_LINE, f"mode = '{mode}'"), CACHE_INIT, "exec"), namespace)
        return namespace["cache_init"]


_LOADED: dict[Path, AuthorsFlux] = {}


def load(src: AuthorsSource) -> AuthorsFlux:
    """Import the authors' `flux` package (as top-level `flux`: their modules import each other by that name);
    once per process and source."""
    if src.root in _LOADED:
        return _LOADED[src.root]
    root = materialize(src, SUBDIR)
    loaded = sys.modules.get("flux")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(root)):
        raise AuthorsSourceMissing(f"another `flux` package is already imported ({loaded.__file__})")
    try:
        importlib.import_module("einops")
    except ImportError as e:  # their layers use einops.rearrange
        raise AuthorsSourceMissing("the authors' flux package needs einops (pip install einops)") from e
    if str(root.parent) not in sys.path:
        sys.path.insert(0, str(root.parent))
    _LOADED[src.root] = AuthorsFlux(importlib.import_module("flux.model"), src)
    return _LOADED[src.root]


class BFLFlux(torch.nn.Module):
    """The authors' `Flux` behind the diffusers FluxTransformer2DModel call signature. Per sample (`reset`), one
    `(cache_dic, current)` per CFG branch from their `cache_init`, `current['num_steps']` = T; each call sets
    `current['step']` / `current['t']` as their `denoise_cache` loop does, then calls their forward."""

    def __init__(self, flux: torch.nn.Module, make_state: Callable[[int], tuple[dict, dict]]) -> None:
        super().__init__()
        self.flux = flux
        self.make_state = make_state
        self.states: list[tuple[dict, dict]] = []
        self.calls = 0

    def reset(self, num_steps: int, branches: int) -> None:
        self.states = [self.make_state(num_steps) for _ in range(max(1, branches))]
        self.calls = 0

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        guidance: torch.Tensor | None = None,
        joint_attention_kwargs: dict | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ):
        cache_dic, current = self.states[self.calls % len(self.states)]
        current["step"] = self.calls // len(self.states)
        current["t"] = float(timestep.flatten()[0])
        self.calls += 1
        b = hidden_states.shape[0]
        img_ids = img_ids if img_ids.ndim == 3 else img_ids[None].expand(b, -1, -1)
        txt_ids = txt_ids if txt_ids.ndim == 3 else txt_ids[None].expand(b, -1, -1)
        out = self.flux(
            img=hidden_states,
            img_ids=img_ids,
            txt=encoder_hidden_states,
            txt_ids=txt_ids,
            timesteps=timestep,  # the pipeline passes t / 1000; BFL's timestep_embedding multiplies by 1000
            y=pooled_projections,
            guidance=guidance,
            cache_dic=cache_dic,
            current=current,
        )
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)


def make_state(cache_init: Callable, **overrides: Any) -> Callable[[int], tuple[dict, dict]]:
    """`num_steps -> (cache_dic, current)`: their `cache_init` (timesteps only feed `current['final_time']`,
    unused by these modes), `overrides` set on `cache_dic` afterwards (the knob: `fresh_threshold`)."""

    def make(num_steps: int) -> tuple[dict, dict]:
        cache_dic, current = cache_init([1 - i / num_steps for i in range(num_steps + 1)])
        cache_dic.update(overrides)
        current["num_steps"] = num_steps
        return cache_dic, current

    return make


class BFLTrace(ComputeTrace):
    """Per transformer call, whether the authors' last single block computed its attention (its fused `linear1`,
    q / k / v and MLP input, fired): the same definition of a computed step as `ComputeTrace` on our side."""

    def __init__(self, transformer: torch.nn.Module, flux: torch.nn.Module) -> None:
        self.calls = []
        self._h = [
            transformer.register_forward_pre_hook(lambda *a: self.calls.append(False)),
            flux.single_blocks[-1].linear1.register_forward_hook(self._hit),
        ]


@contextmanager
def driving(model: Model, bfl: BFLFlux, steps: int) -> Iterator[BFLTrace]:
    """Inside: the pipeline's transformer calls go to `bfl` (fresh cache states); yields the computed-step trace."""
    tr = model.pipe.transformer
    bfl.reset(steps, model.branches)
    tr.forward = lambda *args, **kwargs: bfl(*args, **kwargs)  # a plain attribute, not a submodule
    trace = BFLTrace(tr, bfl.flux)
    try:
        yield trace
    finally:
        trace.close()
        del tr.forward


def sample_authors(
    model: Model, bfl: BFLFlux, prompt: Any, seed: int, steps: int
) -> tuple[torch.Tensor, BFLTrace]:
    """One sample through the authors' model; its output and computed-step trace."""
    with driving(model, bfl, steps) as trace:
        out = model.sample(prompt, seed, steps)
    return out, trace


@dataclass
class Side:
    """Our side of one comparison: a label (recorded in the row's `extra`) and apply / remove at a knob value."""

    label: str
    apply: Callable[[Any, float, int], None]  # (pipe, knob, T)
    remove: Callable[[Any], None]
    deliberate: str = ""  # why ours differs from theirs on purpose ("" = meant to match)


def compare_mode(
    src: AuthorsSource,
    model: Model,
    steps: int,
    values,
    prompts,
    seeds,
    *,
    method: str,
    mode: str,
    sides: list[Side],
    knob: str = "interval",
    note: str = "",
) -> list[Comparison]:
    """Per knob value and prompt: the authors' `mode` (their `cache_init` branch, `fresh_threshold` = the knob)
    through `BFLFlux`, and each of our sides; one row per (side, value, prompt)."""
    authors = load(src)
    flux = authors.build(model.pipe.transformer)
    init = authors.cache_init(mode)
    commit = src.commit()
    rows = []
    for value in values:
        bfl = BFLFlux(flux, make_state(init, fresh_threshold=int(value)))
        for prompt, seed in zip(prompts, seeds, strict=True):
            b, tb = sample_authors(model, bfl, prompt, seed, steps)
            for side in sides:

                def ours(side=side, value=value, prompt=prompt, seed=seed) -> torch.Tensor:
                    side.apply(model.pipe, value, steps)
                    try:
                        return model.sample(prompt, seed, steps)
                    finally:
                        side.remove(model.pipe)

                a, ta = traced(model, ours)
                n = model.branches
                rows.append(
                    Comparison(
                        method,
                        model.name,
                        src.repo,
                        commit,
                        steps,
                        knob,
                        float(value),
                        str(prompt),
                        seed,
                        float((a - b).abs().max()),
                        psnr(a, b),
                        ta.steps(n),
                        tb.steps(n),
                        note=f"ours: {side.label}; authors: BFL flux, cache_init mode {mode!r}. {note}".strip(),
                        extra={"ours": side.label, "authors_mode": mode, "deliberate": side.deliberate},
                    )
                )
    return rows
