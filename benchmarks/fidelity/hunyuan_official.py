"""The official HunyuanVideo `HYVideoDiffusionTransformer` (loaded at run time from a fetched source) with hunyuan-video-tiny's weights, driven by our HunyuanVideoPipeline.

The authors' HunyuanVideo scripts (TeaCache4HunyuanVideo, EasyCache4HunyuanVideo, DiCache's HunyuanVideo, …) patch
`hyvideo.modules.models.HYVideoDiffusionTransformer` of Tencent/HunyuanVideo, not diffusers'
`HunyuanVideoTransformer3DModel`. This module builds that class from the fetched source (nothing of it is copied
into the repository), loads hunyuan-video-tiny's diffusers weights into it (the inverse of diffusers'
`scripts/convert_hunyuan_video_to_diffusers.py`) and installs a wrapper with the diffusers transformer's call
signature on our pipeline's transformer, so the same pipeline loop (prompt encoding, seeds, FlowMatchEuler, true
CFG: conditional call then unconditional) drives the official model — plain, or through an authors' forward bound
to it as their scripts bind it, with one copy of their state per CFG branch (their forwards keep one state and
were released for the CFG-distilled model: one call per step).

Differences of the stand-in, none of them numerical: the official `attention(mode="flash")` (flash-attn varlen,
CUDA only) is replaced by SDPA over the same two segments per row ([image + valid text], [padding text]);
`get_cu_seqlens` builds its tensor on the CPU; the token refiner (depth 2 hard-coded) keeps the tiny model's
`num_refiner_layers` blocks; RoPE tables come from the official `get_nd_rotary_pos_embed` as `inference.py` calls it.

Run ``python -m benchmarks.fidelity.hunyuan_official`` (``DPCACHE_HUNYUAN_SRC`` = a checkout or git dir) to print
the uncached check: the official model's frames vs our transformer's, same pipeline, same seeds.
"""

from __future__ import annotations

import ast
import copy
import importlib
import itertools
import os
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
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
from .hunyuan_weights import diffusers_names, official_state_dict  # noqa: F401 (re-exported)

HY_REPO = "Tencent/HunyuanVideo"
_COUNTER = itertools.count()


def hunyuan_source(near: AuthorsSource | None = None) -> AuthorsSource:
    """Tencent/HunyuanVideo: `DPCACHE_HUNYUAN_SRC`, else next to `near` in a mirror (`owner+name/repo`) or a
    checkout layout; AuthorsSourceMissing saying where it was looked for."""
    env = os.environ.get("DPCACHE_HUNYUAN_SRC")
    candidates = [Path(env)] if env else []
    if near is not None:
        root = near.root.resolve()
        candidates += [root.parent.parent / "Tencent+HunyuanVideo" / "repo", root.parent / "HunyuanVideo"]
    for c in candidates:
        if (c / "HEAD").is_file() or (c / "hyvideo" / "modules" / "models.py").is_file():
            return AuthorsSource(c, HY_REPO)
    raise AuthorsSourceMissing(
        f"{HY_REPO}: not found (set DPCACHE_HUNYUAN_SRC; looked in {[str(c) for c in candidates]})"
    )


def varlen_sdpa(q, k, v, cu_seqlens_q, max_seqlen_q, batch_size) -> torch.Tensor:
    """`flash_attn_varlen_func` over the official layout ([B, L, H, D]; per row two segments: image + valid text,
    then the padding) as one masked SDPA; [B, L, H*D] out, as the official `attention`."""
    b, length = q.shape[:2]
    pos = torch.arange(length, device=q.device)
    valid = (cu_seqlens_q[1::2].to(q.device).long() - torch.arange(b, device=q.device) * max_seqlen_q)[:b]
    seg = pos[None, :] >= valid[:, None]  # False: first segment, True: padding segment
    mask = (seg[:, :, None] == seg[:, None, :])[:, None]
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2).reshape(b, length, -1)


def _patched_attention(original: Callable) -> Callable:
    def attention(q, k, v, mode="flash", drop_rate=0, attn_mask=None, causal=False, cu_seqlens_q=None,
                  cu_seqlens_kv=None, max_seqlen_q=None, max_seqlen_kv=None, batch_size=1):  # fmt: skip
        if mode != "flash":
            return original(q, k, v, mode, drop_rate, attn_mask, causal, cu_seqlens_q, cu_seqlens_kv,
                            max_seqlen_q, max_seqlen_kv, batch_size)  # fmt: skip
        if drop_rate or causal or not torch.equal(cu_seqlens_q, cu_seqlens_kv):
            raise NotImplementedError("varlen_sdpa: only the official self-attention call is mapped")
        return varlen_sdpa(q, k, v, cu_seqlens_q, max_seqlen_q, batch_size)

    return attention


def cpu_cu_seqlens(text_mask: torch.Tensor, img_len: int) -> torch.Tensor:
    """The official `get_cu_seqlens` on the text mask's device (the official one allocates on CUDA)."""
    b, max_len = text_mask.shape[0], text_mask.shape[1] + img_len
    text_len = text_mask.sum(dim=1).to(torch.int32)
    cu = torch.zeros(2 * b + 1, dtype=torch.int32, device=text_mask.device)
    for i in range(b):
        cu[2 * i + 1] = i * max_len + text_len[i] + img_len
        cu[2 * i + 2] = (i + 1) * max_len
    return cu


@contextmanager
def hyvideo_alias(hy: dict[str, types.ModuleType]) -> Iterator[None]:
    """Within: `import hyvideo…` resolves to `hy`'s modules; on exit the previous `hyvideo*` modules restored."""
    before = {k: v for k, v in sys.modules.items() if k == "hyvideo" or k.startswith("hyvideo.")}
    sys.modules.update(hy)
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k == "hyvideo" or k.startswith("hyvideo.")]:
            del sys.modules[k]
        sys.modules.update(before)


def load_hyvideo_modules(src: AuthorsSource, subdir: str = "hyvideo") -> dict[str, types.ModuleType]:
    """`<subdir>/modules` (and `utils`) of a fetched source under a private package name (the package `__init__`
    is not run), the flash-attention path and `get_cu_seqlens` replaced; keyed by the names the authors' scripts
    import them as (`hyvideo.modules.models`, `hyvideo.modules.attenion`, `hyvideo.modules.modulate_layers`, …)."""
    root = materialize(src, subdir)
    pkg = f"_authors_hyvideo_{next(_COUNTER)}"
    top = types.ModuleType(pkg)
    top.__path__ = [str(root)]
    sys.modules[pkg] = top
    hy: dict[str, types.ModuleType] = {"hyvideo": top}
    with hyvideo_alias(hy):
        attn = importlib.import_module(f"{pkg}.modules.attenion")
        attn.attention = _patched_attention(attn.attention)
        attn.get_cu_seqlens = cpu_cu_seqlens
        models = importlib.import_module(f"{pkg}.modules.models")
        models.attention, models.get_cu_seqlens = attn.attention, cpu_cu_seqlens
        names = [k for k in sys.modules if k.startswith(pkg + ".")]
    for k in names:
        hy["hyvideo" + k[len(pkg) :]] = sys.modules[k]
    return hy


def build_official(hy: dict[str, types.ModuleType], transformer: torch.nn.Module) -> torch.nn.Module:
    """HYVideoDiffusionTransformer with the architecture and weights of a HunyuanVideoTransformer3DModel."""
    c = transformer.config
    if c.image_condition_type is not None:
        raise ValueError("only text-to-video HunyuanVideo transformers are mapped")
    args = types.SimpleNamespace(text_states_dim=c.text_embed_dim, text_states_dim_2=c.pooled_projection_dim)
    official = hy["hyvideo.modules.models"].HYVideoDiffusionTransformer(
        args,
        patch_size=[c.patch_size_t, c.patch_size, c.patch_size],
        in_channels=c.in_channels,
        out_channels=c.out_channels,
        hidden_size=c.num_attention_heads * c.attention_head_dim,
        heads_num=c.num_attention_heads,
        mlp_width_ratio=c.mlp_ratio,
        mm_double_blocks_depth=c.num_layers,
        mm_single_blocks_depth=c.num_single_layers,
        rope_dim_list=list(c.rope_axes_dim),
        qk_norm=c.qk_norm is not None,
        guidance_embed=c.guidance_embeds,
    )
    refiner = official.txt_in.individual_token_refiner
    refiner.blocks = refiner.blocks[: c.num_refiner_layers]  # the official class hard-codes depth 2
    names = list(official.state_dict())
    official.load_state_dict(official_state_dict(names, transformer.state_dict()), strict=True)
    official.rope_theta = float(c.rope_theta)
    if transformer.dtype != torch.float32:
        official = official.to(transformer.dtype)
    return official.eval().requires_grad_(False)


def rope(hy: dict[str, types.ModuleType], official: torch.nn.Module, shape: tuple[int, ...]):
    """freqs_cos, freqs_sin for latents of `shape` (B, C, F, H, W), as `inference.py`'s get_rotary_pos_embed."""
    sizes = [s // p for s, p in zip(shape[2:], official.patch_size, strict=True)]
    return hy["hyvideo.modules.posemb_layers"].get_nd_rotary_pos_embed(
        official.rope_dim_list, sizes, theta=official.rope_theta, use_real=True, theta_rescale_factor=1
    )


def load_official(model: Model, src: AuthorsSource, subdir: str = "hyvideo") -> tuple[dict, torch.nn.Module]:
    hy = load_hyvideo_modules(src, subdir)
    return hy, build_official(hy, model.pipe.transformer)


def load_script(source: str, names: tuple[str, ...], filename: str, hy: dict) -> dict[str, Callable]:
    """The named top-level functions of an authors' HunyuanVideo script with its imports (`hyvideo.*` resolved
    to `hy`; an import that fails here — their CLI's config, the sampler, loguru — is left out)."""
    tree = ast.parse(source, filename)
    ns: dict[str, Any] = {"__name__": f"authors:{filename}"}
    with hyvideo_alias(hy):
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                with suppress(Exception):
                    exec(compile(ast.Module(body=[node], type_ignores=[]), filename, "exec"), ns)
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    exec(compile(ast.Module(body=funcs, type_ignores=[]), filename, "exec"), ns)
    missing = [n for n in names if n not in ns]
    if missing:
        raise AuthorsSourceMissing(f"{filename} defines no {', '.join(missing)}")
    return {n: ns[n] for n in names}


def _diffusers_call(
    hy: dict, official: torch.nn.Module, states: list[dict], uncond: dict | None = None
) -> Callable:
    """A forward with HunyuanVideoTransformer3DModel's signature that runs `official` (its current forward): call
    i with states[i % len] as attributes (one per CFG branch), keeping what it set. With `uncond` (the
    unconditional call's text inputs), CFG as the official pipeline runs it: the conditional call runs one batch
    [uncond, cond] (one state), the unconditional call returns its half."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    calls, before, stash = [0], set(official.__dict__), {}

    def run(x, t, text, mask, pooled, guidance):
        cos, sin = rope(hy, official, tuple(x.shape))
        st = states[calls[0] % len(states)]
        for k, v in st.items():
            object.__setattr__(official, k, v)
        try:
            kw = dict(
                text_states=text, text_mask=mask.long(), text_states_2=pooled, freqs_cos=cos, freqs_sin=sin
            )
            return official(x, t, **kw, guidance=guidance, return_dict=True)["x"].to(x.dtype)
        finally:
            for k in [k for k in official.__dict__ if k not in before]:
                st[k] = official.__dict__.pop(k)

    def forward(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections,
                guidance=None, attention_kwargs=None, return_dict=True):  # fmt: skip
        args = (encoder_hidden_states, encoder_attention_mask, pooled_projections)
        if uncond is None:
            out = run(hidden_states, timestep, *args, guidance)
        elif calls[0] % 2 == 0:  # conditional call: the official pipeline's batch [uncond, cond]
            cat = [torch.cat([uncond[k], a]) for k, a in zip(("text", "mask", "pooled"), args, strict=True)]
            both = run(hidden_states.repeat(2, 1, 1, 1, 1), timestep.repeat(2), *cat, guidance)
            out, stash["uncond"], stash["x"] = both[1:], both[:1], hidden_states
        else:
            if not torch.equal(stash.get("x"), hidden_states):
                raise RuntimeError(
                    "batched CFG: the unconditional call's latents differ from the conditional's"
                )
            out = stash.pop("uncond")
        calls[0] += 1
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    return forward


def uncond_inputs(model: Model) -> dict[str, torch.Tensor]:
    """The unconditional call's text inputs (negative prompt "", the same for every prompt), from a 1-step run."""
    seen: dict[str, torch.Tensor] = {}
    tr, n = model.pipe.transformer, [0]

    def record(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections,
               guidance=None, attention_kwargs=None, return_dict=True):  # fmt: skip
        if n[0] == 1:
            seen.update(text=encoder_hidden_states, mask=encoder_attention_mask, pooled=pooled_projections)
        n[0] += 1
        return (torch.zeros_like(hidden_states),)

    tr.forward = record
    try:
        model.sample(model.spec.evaluation_prompts[0], 0, 1)
    finally:
        del tr.forward
    if model.branches != 2 or not seen:
        raise ValueError("batched CFG needs a pipeline calling the transformer twice per step")
    return seen


@contextmanager
def driving(model: Model, hy: dict, official: torch.nn.Module, forward: Callable | None = None,
            state: dict | None = None, batched: bool = False) -> Iterator[None]:  # fmt: skip
    """Within: our pipeline's transformer calls run the official model; with `forward`, through that authors'
    forward bound to it, a fresh copy of `state` per CFG branch (calls alternate cond / uncond) or, `batched`,
    one state for the official pipeline's batched CFG call."""
    tr = model.pipe.transformer
    uncond = uncond_inputs(model) if batched else None
    if forward is not None:
        official.forward = types.MethodType(forward, official)
    n = 1 if batched else max(1, model.branches)
    tr.forward = _diffusers_call(hy, official, [copy.deepcopy(state or {}) for _ in range(n)], uncond)
    try:
        yield
    finally:
        del tr.forward
        official.__dict__.pop("forward", None)


class _NoCfgSpec:
    """A model spec whose pipeline runs without CFG (`true_cfg_scale` 1: one transformer call per step)."""

    def __init__(self, spec: Any) -> None:
        self._spec = spec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spec, name)

    def pipeline_kwargs(self, prompt: Any, steps: int) -> dict:
        return {**self._spec.pipeline_kwargs(prompt, steps), "true_cfg_scale": 1.0}


def without_cfg(model: Model) -> Model:
    """`model` sampled without CFG: one call per step, as the authors ran their forwards (the released
    HunyuanVideo is CFG-distilled: guidance embedded, one call per step)."""
    out = Model(model.name, model.pipe, _NoCfgSpec(model.spec))
    if out.branches != 1:
        raise ValueError(
            f"{model.name}: true_cfg_scale 1 still calls the transformer {out.branches}x per step"
        )
    return out


class OfficialTrace(ComputeTrace):
    """`ComputeTrace` for the official model: a call computed if its last block's first Linear ran on all of the
    block's tokens (TaylorSeer's 'ToCa' path runs it on the fresh tokens only: not a computed step)."""

    def __init__(self, official: torch.nn.Module) -> None:
        self.calls: list[bool] = []
        last = official.single_blocks[-1] if len(official.single_blocks) else official.double_blocks[-1]
        linear = last.linear1 if hasattr(last, "linear1") else last.img_attn_qkv
        tokens = [0]
        self._h = [
            official.register_forward_pre_hook(lambda *a: self.calls.append(False)),
            last.register_forward_pre_hook(lambda m, args: tokens.__setitem__(0, args[0].shape[1])),
            linear.register_forward_hook(self._full),
        ]
        self._tokens = tokens

    def _full(self, module: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if out.shape[1] == self._tokens[0]:
            self._hit()


def uncached_difference(model: Model, hy: dict, official: torch.nn.Module, prompt: Any, seed: int,
                        steps: int, batched: bool = False) -> float:  # fmt: skip
    """max |frames of our transformer − frames of the official model|, both uncached, same pipeline and seed."""
    ours = model.sample(prompt, seed, steps)
    with driving(model, hy, official, batched=batched):
        theirs = model.sample(prompt, seed, steps)
    return float((ours - theirs).abs().max())


def compare_hunyuan(model: Model, hy: dict, official: torch.nn.Module, pair: Pair, steps: int, prompt: Any,
                    seed: int, floor: float | None = None, note: str = "", batched: bool = False) -> Comparison:  # fmt: skip
    """Our port (`pair.apply`) vs the authors' forward on the official model (`pair.forward`, `pair.state` per
    CFG branch): outputs, computed steps of both branches (unconditional in `extra`), uncached floor."""

    def ours() -> torch.Tensor:
        pair.apply()
        try:
            return model.sample(prompt, seed, steps)
        finally:
            pair.remove()

    a, ta = traced(model, ours)
    tb = OfficialTrace(official)
    try:
        with driving(model, hy, official, pair.forward, pair.state, batched):
            b = model.sample(prompt, seed, steps)
    finally:
        tb.close()
    n, extra = model.branches, dict(pair.extra)
    nb = 1 if batched else n  # batched CFG: one official call per step, both branches computed together
    if n > 1:
        extra.update(steps_ours_uncond=ta.steps(n, 1), steps_theirs_uncond=tb.steps(nb, nb - 1))
    if batched:
        extra["theirs_cfg"] = "batched [uncond, cond], one state (the official pipeline)"
    if floor is not None:
        extra["uncached_max_abs"] = floor
    return Comparison.of(pair, model, steps, prompt, seed, a, b, ta.steps(n), tb.steps(nb), note, extra)


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from .common import load_model

    model = load_model("hunyuan-video-tiny")
    src = hunyuan_source()
    hy, official = load_official(model, src)
    for i, prompt in enumerate(model.spec.evaluation_prompts[:2]):
        d = uncached_difference(model, hy, official, prompt, i, 50)
        print(f"{HY_REPO} @ {src.commit()[:7]}, T = 50, prompt {i}: uncached frames max|d| = {d:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
