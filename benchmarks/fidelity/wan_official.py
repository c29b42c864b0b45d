"""The official Wan2.1 `WanModel` (loaded at run time from a fetched source) with wan-tiny's weights, driven by our WanPipeline.

The authors' Wan scripts (TeaCache4Wan2.1, EasyCache4Wan2.1, DiCache's WAN2.1, TaylorSeer-Wan2.1) patch the official
model class `wan.modules.model.WanModel` of Wan-Video/Wan2.1, not diffusers' `WanTransformer3DModel`. This module
builds that class from the fetched source (nothing of it is copied into the repository), loads wan-tiny's diffusers
weights into it (the inverse of diffusers' `scripts/convert_wan_to_diffusers.py` renaming) and installs a wrapper
with the diffusers transformer's call signature on our pipeline's transformer, so the same WanPipeline loop (prompt
encoding, seeds, UniPC scheduler, CFG: conditional call then unconditional, as the authors' `generate` loops)
drives the official model — plain, or through an authors' forward bound to it as their scripts bind it.

Attention: the official `flash_attention` needs CUDA flash-attn; it is replaced by a float32 SDPA with the same
padding semantics (`k_lens`), the path the official `attention()` falls back to without flash-attn (there in
bfloat16; float32 here because wan-tiny runs in float32).

Run ``python -m benchmarks.fidelity.wan_official`` (``DPCACHE_WAN_SRC`` = a Wan2.1 checkout or git dir) to print
the uncached check: the official model's frames vs our transformer's, same pipeline, same seeds.
"""

from __future__ import annotations

import ast
import copy
import itertools
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
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

WAN_REPO = "Wan-Video/Wan2.1"
_COUNTER = itertools.count()
# diffusers name fragment -> official name fragment, applied in order (the inverse of convert_wan_to_diffusers.py)
_RENAME = (
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
    (".attn1.to_out.0.", ".self_attn.o."),
    (".attn1.to_", ".self_attn."),
    (".attn1.", ".self_attn."),
    (".attn2.to_out.0.", ".cross_attn.o."),
    (".attn2.to_", ".cross_attn."),
    (".attn2.", ".cross_attn."),
    # diffusers calls the blocks' norms in order norm1, norm2 (cross-attention, affine), norm3; official: 1, 3, 2
    (".norm2.", ".norm3."),
    (".scale_shift_table", ".modulation"),
)


def wan_source(near: AuthorsSource | None = None) -> AuthorsSource:
    """The Wan-Video/Wan2.1 source: `DPCACHE_WAN_SRC`, else next to `near` in a mirror (`owner+name/repo`) or a
    checkout layout; AuthorsSourceMissing saying where it was looked for."""
    candidates = [Path(os.environ["DPCACHE_WAN_SRC"])] if os.environ.get("DPCACHE_WAN_SRC") else []
    if near is not None:
        root = near.root.resolve()
        candidates += [root.parent.parent / "Wan-Video+Wan2.1" / "repo", root.parent / "Wan2.1"]
    for c in candidates:
        if (c / "HEAD").is_file() or (c / "wan" / "modules" / "model.py").is_file():
            return AuthorsSource(c, WAN_REPO)
    raise AuthorsSourceMissing(
        f"{WAN_REPO}: not found (set DPCACHE_WAN_SRC; looked in {[str(c) for c in candidates]})"
    )


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lens: torch.Tensor | None = None,
    k_lens: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    q_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    deterministic: bool = False,
    dtype: torch.dtype | None = None,
    version: int | None = None,
) -> torch.Tensor:
    """`flash_attention`'s contract ([B, L, N, D] in and out; keys beyond `k_lens` masked; queries beyond `q_lens`
    give zeros) with torch's SDPA in the inputs' dtype."""
    if window_size != (-1, -1) or causal or dropout_p:
        raise NotImplementedError(
            "sdpa_attention: windowed / causal / dropout attention is not used by WanModel"
        )
    out_dtype = v.dtype
    if q_scale is not None:
        q = q * q_scale
    qt, kt, vt = (x.transpose(1, 2).to(v.dtype) for x in (q, k, v))
    mask = None
    if k_lens is not None:
        keys = torch.arange(k.shape[1], device=k.device)
        mask = (keys[None, :] < k_lens.to(k.device)[:, None])[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=softmax_scale)
    out = out.transpose(1, 2)
    if q_lens is not None:
        rows = torch.arange(q.shape[1], device=q.device)
        out = out * (rows[None, :] < q_lens.to(q.device)[:, None])[:, :, None, None].to(out.dtype)
    return out.contiguous().to(out_dtype)


@contextmanager
def wan_alias(wan: dict[str, types.ModuleType]) -> Iterator[None]:
    """Within: `import wan…` resolves to `wan`'s modules (the authors' files import the package by that name);
    on exit every `wan` / `wan.*` module imported meanwhile is dropped from sys.modules and the old ones restored
    (the functions loaded keep their modules)."""
    before = {k: v for k, v in sys.modules.items() if k == "wan" or k.startswith("wan.")}
    sys.modules.update(wan)
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k == "wan" or k.startswith("wan.")]:
            del sys.modules[k]
        sys.modules.update(before)


def load_wan_modules(
    src: AuthorsSource, subdir: str = "wan", whole: bool = False
) -> dict[str, types.ModuleType]:
    """`<subdir>/modules/{attention,model}.py` of a fetched source as modules under a private package name (their
    `__init__`s, which import T5, VAE and CLIP, are not run), `flash_attention` replaced by `sdpa_attention`; keyed
    by the names the authors' files import them as (`wan`, `wan.modules`, `wan.modules.model`, ...). `whole`: the
    rest of `<subdir>` is importable too (`wan.taylorseer…` of TaylorSeer's copy), under `wan_alias`."""
    wan_dir = materialize(src, subdir) if whole else None
    modules_dir = wan_dir / "modules" if wan_dir is not None else materialize(src, f"{subdir}/modules")
    pkg = f"_authors_wan_{next(_COUNTER)}"
    top = types.ModuleType(pkg)
    # only the registered sub-modules resolve unless `whole`; `from wan.configs import …` fails (skipped)
    top.__path__ = [str(wan_dir)] if wan_dir is not None else []
    sub = types.ModuleType(f"{pkg}.modules")
    sub.__path__ = [str(modules_dir)]
    sys.modules[pkg], sys.modules[f"{pkg}.modules"] = top, sub
    wan = {"wan": top, "wan.modules": sub}
    import importlib

    # their `torch.cuda.amp.autocast` decorators warn on every CPU call (deprecated; disabled without CUDA)
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast.*", category=FutureWarning)
    warnings.filterwarnings(
        "ignore", message=r"CUDA is not available.*Disabling autocast", category=UserWarning
    )
    with wan_alias(wan):
        attention = importlib.import_module(f"{pkg}.modules.attention")
        attention.flash_attention = sdpa_attention
        attention.FLASH_ATTN_2_AVAILABLE = attention.FLASH_ATTN_3_AVAILABLE = False
        sys.modules["wan.modules.attention"] = attention
        model = importlib.import_module(f"{pkg}.modules.model")
        model.flash_attention = sdpa_attention
    top.modules, sub.attention, sub.model, sub.WanModel = sub, attention, model, model.WanModel
    return wan | {"wan.modules.attention": attention, "wan.modules.model": model}


def official_state_dict(diffusers_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """wan-tiny's diffusers state dict under the official WanModel's parameter names."""
    out = {}
    for key, value in diffusers_sd.items():
        if key == "scale_shift_table":
            new = "head.modulation"
        elif key.startswith("proj_out."):
            new = "head.head." + key[len("proj_out.") :]
        else:
            new = key if key.startswith("blocks.") else "." + key
            for a, b in _RENAME:
                new = new.replace(a, b)
            new = new.lstrip(".")
        out[new] = value
    return out


def build_official(
    wan: dict[str, types.ModuleType], transformer: torch.nn.Module, text_len: int
) -> torch.nn.Module:
    """The official WanModel with the architecture and weights of a diffusers WanTransformer3DModel (strict load)."""
    c = transformer.config
    if c.image_dim is not None or c.added_kv_proj_dim is not None:
        raise ValueError("only text-to-video Wan transformers are mapped")
    official = wan["wan.modules.model"].WanModel(
        model_type="t2v",
        patch_size=tuple(c.patch_size),
        text_len=text_len,
        in_dim=c.in_channels,
        dim=c.num_attention_heads * c.attention_head_dim,
        ffn_dim=c.ffn_dim,
        freq_dim=c.freq_dim,
        text_dim=c.text_dim,
        out_dim=c.out_channels,
        num_heads=c.num_attention_heads,
        num_layers=c.num_layers,
        qk_norm=c.qk_norm is not None,
        cross_attn_norm=c.cross_attn_norm,
        eps=c.eps,
    )
    official.load_state_dict(official_state_dict(transformer.state_dict()), strict=True)
    if transformer.dtype != torch.float32:
        official = official.to(transformer.dtype)
    return official.eval().requires_grad_(False)


def load_script(
    source: str, names: tuple[str, ...], filename: str, wan: dict[str, types.ModuleType]
) -> dict[str, Callable]:
    """The named top-level functions of an authors' Wan script, with its imports (`wan.*` resolved to `wan`'s
    modules; an import that fails here — their CLI's configs, prompt extenders, plotting — is left out, and a
    function that needs one fails when called)."""
    tree = ast.parse(source, filename)
    namespace: dict[str, Any] = {"__name__": f"authors:{filename}"}
    with wan_alias(wan):
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                if any(a.name == "pdb" for a in node.names):
                    continue
                with suppress(ImportError):
                    exec(compile(ast.Module(body=[node], type_ignores=[]), filename, "exec"), namespace)
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    exec(compile(ast.Module(body=funcs, type_ignores=[]), filename, "exec"), namespace)
    missing = [n for n in names if n not in namespace]
    if missing:
        raise AuthorsSourceMissing(f"{filename} defines no {', '.join(missing)}")
    return {n: namespace[n] for n in names}


def _diffusers_call(official: torch.nn.Module) -> Callable:
    """A forward with WanTransformer3DModel's signature that runs `official` (its current forward, which may be
    an authors' patched one) on one sample per batch row, as the authors' generate loops call it."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    def forward(
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
    ):
        if encoder_hidden_states_image is not None:
            raise NotImplementedError("image conditioning is not mapped")
        if encoder_hidden_states.shape[1] > official.text_len:
            raise ValueError(
                f"context of {encoder_hidden_states.shape[1]} tokens > text_len {official.text_len}"
            )
        _, _, f, h, w = hidden_states.shape
        p = official.patch_size
        seq_len = (f // p[0]) * (h // p[1]) * (w // p[2])
        t = timestep.reshape(-1).expand(hidden_states.shape[0])
        out = official(list(hidden_states), t=t, context=list(encoder_hidden_states), seq_len=seq_len)
        out = torch.stack(out).to(hidden_states.dtype)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    return forward


@contextmanager
def driving(
    model: Model, official: torch.nn.Module, forward: Callable | None = None, state: dict | None = None
) -> Iterator[None]:
    """Within: our pipeline's transformer calls run the official model; with `forward`, through that authors'
    forward bound to it and `state` set as its attributes (as their scripts set them on the class; fresh per
    run, one object for both CFG branches: their forwards count calls and split them even / odd themselves)."""
    tr = model.pipe.transformer
    before = set(official.__dict__)
    if forward is not None:
        official.forward = types.MethodType(forward, official)
        for k, v in (state or {}).items():
            object.__setattr__(official, k, v)
    tr.forward = _diffusers_call(official)
    try:
        yield
    finally:
        del tr.forward
        for k in [k for k in official.__dict__ if k not in before]:
            official.__dict__.pop(k)


class OfficialTrace(ComputeTrace):
    """`ComputeTrace` for the official model: a call computed if its last block's self-attention `q` fired."""

    def __init__(self, official: torch.nn.Module) -> None:
        self.calls: list[bool] = []
        self._h = [
            official.register_forward_pre_hook(lambda *a: self.calls.append(False)),
            official.blocks[-1].self_attn.q.register_forward_hook(self._hit),
        ]


def text_len(model: Model) -> int:
    """The pipeline's padded prompt length (the official model pads the context to `text_len`)."""
    return int(
        model.spec.pipeline_kwargs(model.spec.evaluation_prompts[0], 1).get("max_sequence_length", 512)
    )


def load_official(
    model: Model, src: AuthorsSource, subdir: str = "wan", whole: bool = False
) -> tuple[dict, torch.nn.Module]:
    """The official modules of `src` and a WanModel carrying `model`'s transformer weights."""
    wan = load_wan_modules(src, subdir, whole)
    return wan, build_official(wan, model.pipe.transformer, text_len(model))


def uncached_difference(model: Model, official: torch.nn.Module, prompt: Any, seed: int, steps: int) -> float:
    """max |frames of our transformer − frames of the official model|, both uncached, same pipeline and seed."""
    ours = model.sample(prompt, seed, steps)
    with driving(model, official):
        theirs = model.sample(prompt, seed, steps)
    return float((ours - theirs).abs().max())


def compare_wan(
    model: Model,
    official: torch.nn.Module,
    pair: Pair,
    steps: int,
    prompt: Any,
    seed: int,
    floor: float | None = None,
    note: str = "",
    theirs_context: Callable[[], AbstractContextManager] | None = None,
) -> Comparison:
    """Sample `prompt` with our port (diffusers transformer, `pair.apply`) and with the authors' forward bound to
    the official model (`pair.forward`, a fresh copy of `pair.state`); outputs, computed steps of both CFG
    branches (the conditional in `steps_*`, the unconditional in `extra`), and the uncached floor `floor`;
    `theirs_context()`, if given, installs the authors' side instead of `driving(…, pair.forward, pair.state)`."""

    def ours() -> torch.Tensor:
        pair.apply()
        try:
            return model.sample(prompt, seed, steps)
        finally:
            pair.remove()

    def theirs() -> torch.Tensor:
        ctx = (
            theirs_context()
            if theirs_context
            else driving(model, official, pair.forward, copy.deepcopy(pair.state))
        )
        with ctx:
            return model.sample(prompt, seed, steps)

    a, ta = traced(model, ours)
    tb = OfficialTrace(official)
    try:
        b = theirs()
    finally:
        tb.close()
    n = model.branches
    extra = dict(pair.extra)
    if n > 1:
        extra.update(steps_ours_uncond=ta.steps(n, 1), steps_theirs_uncond=tb.steps(n, 1))
    if floor is not None:
        extra["uncached_max_abs"] = floor
    return Comparison.of(pair, model, steps, prompt, seed, a, b, ta.steps(n), tb.steps(n), note, extra)


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from .common import load_model

    model = load_model("wan-tiny")
    src = wan_source()
    _, official = load_official(model, src)
    for i, prompt in enumerate(model.spec.evaluation_prompts[:2]):
        d = uncached_difference(model, official, prompt, i, 50)
        print(f"{WAN_REPO} @ {src.commit()[:7]}, T = 50, prompt {i}: uncached frames max|d| = {d:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
