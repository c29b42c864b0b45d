"""FirstBlockCache: our port (diffusers' hook, baselines/firstblockcache.py) next to chengzeyi/ParaAttention's."""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

from .common import AuthorsSource, Comparison, Model, _single_block_shim, psnr, traced

REPO = "chengzeyi/ParaAttention"
PKG = "src/para_attn/first_block_cache/"
FILES = ("taylorseer", "utils", "diffusers_adapters.flux", "diffusers_adapters.wan")
MODELS = ("flux-tiny", "wan-tiny")
# their adapter per transformer class prefix, and its `apply_cache_on_pipe` default for `enable_alter_cache`
ADAPTERS = {"Flux": ("flux", False), "Wan": ("wan", True)}
KNOB = "residual_diff_threshold"
VALUES = (0.0, 0.05, 0.2, 1.0)
SHARED = (
    "shared state: ParaAttention's flux default keeps one cache state for the cond and uncond calls (written for "
    "guidance-distilled FLUX.1-dev, one call per step); ours keeps one per CFG branch = their "
    "enable_alter_cache=True (their wan default), checked identical"
)


def load_para_attn(src: AuthorsSource) -> dict[str, types.ModuleType]:
    """ParaAttention's First Block Cache modules (taylorseer, utils, diffusers_adapters/flux, wan), executed from the
    fetched source under their own package names. The package `__init__` (attention kernels, config) is not
    run: `para_attn` and `para_attn.primitives` are stand-ins; `primitives` is only used when the transformer is
    parallelized (`all_reduce_sync`), which ours never is."""
    saved = {k: v for k, v in sys.modules.items() if k == "para_attn" or k.startswith("para_attn.")}
    mods: dict[str, types.ModuleType] = {}

    def package(name: str) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__path__ = []  # a package: relative imports resolve against sys.modules
        sys.modules[name] = m
        return m

    prim = types.ModuleType("para_attn.primitives")

    def all_reduce_sync(*args, **kwargs):
        raise RuntimeError("para_attn.primitives stand-in: parallelized FBC is not checked")

    prim.all_reduce_sync = all_reduce_sync
    try:
        root = package("para_attn")
        sys.modules["para_attn.primitives"] = root.primitives = prim
        fbc = package("para_attn.first_block_cache")
        adapters = package("para_attn.first_block_cache.diffusers_adapters")
        for rel in FILES:
            name = f"para_attn.first_block_cache.{rel}"
            path = PKG + rel.replace(".", "/") + ".py"
            m = types.ModuleType(name)
            m.__package__ = name.rpartition(".")[0]
            m.__file__ = f"{src.repo}:{path}"
            sys.modules[name] = m
            exec(compile(src.read(path), m.__file__, "exec"), m.__dict__)
            setattr(adapters if rel.startswith("diffusers_adapters.") else fbc, rel.split(".")[-1], m)
            mods[rel] = m
    finally:
        for k in [k for k in sys.modules if k == "para_attn" or k.startswith("para_attn.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return mods


@contextmanager
def authors_cache(model: Model, mods: dict[str, types.ModuleType], threshold: float, alter: bool = False):
    """The transformer patched by their `apply_cache_on_transformer` and a cache context around the sample, as
    their `apply_cache_on_pipe(pipe, residual_diff_threshold=…)` does (but without patching the pipeline
    class); module order restored afterwards. On Flux, diffusers 0.42's single blocks take text and image
    separately, so they get common.py's shim accepting the concatenated stream the authors' code passes."""
    tr = model.pipe.transformer
    utils = mods["utils"]
    adapter, _ = ADAPTERS[family(model)]
    txt_len = [0]
    hooks, singles = [], []
    if adapter == "flux":
        hooks.append(
            tr.register_forward_pre_hook(
                lambda m, a, kw: txt_len.__setitem__(0, kw["encoder_hidden_states"].shape[1]),
                with_kwargs=True,
            )
        )
        singles = list(tr.single_transformer_blocks)
    for block in singles:
        block.forward = _single_block_shim(block, txt_len)
    order = list(tr._modules)
    mods[f"diffusers_adapters.{adapter}"].apply_cache_on_transformer(tr)
    try:
        with utils.cache_context(
            utils.create_cache_context(residual_diff_threshold=threshold, enable_alter_cache=alter)
        ):
            yield utils.get_current_cache_context()
    finally:
        for h in hooks:
            h.remove()
        del tr.forward
        del tr._is_cached
        for block in singles:
            del block.forward
        # their `mock.patch.object` deletes and re-adds the patched block lists (`transformer_blocks` …), which
        # moves them to the end of `_modules`; diffusers' hook finds head and tail blocks in that order
        tr._modules = {k: tr._modules[k] for k in order}


def family(model: Model) -> str:
    """The key of `ADAPTERS` for this model's transformer (HunyuanVideo's adapter is not loadable, see below)."""
    from .common import AuthorsSourceMissing

    name = type(model.pipe.transformer).__name__
    for prefix in ADAPTERS:
        if name.startswith(prefix):
            return prefix
    raise AuthorsSourceMissing(
        f"{name}: ParaAttention's hunyuan_video adapter re-implements an older diffusers forward and needs "
        "para_attn's SparseKVAttnMode kernel module; only its flux and wan adapters are checked"
    )


def compare_one(
    model: Model, mods: dict, commit: str, steps: int, value: float, prompt: Any, seed: int, alter: bool
) -> Comparison:
    """One prompt / seed at one threshold: diffusers' hook (our port) vs ParaAttention, outputs and steps.
    `alter`: their `enable_alter_cache` (separate buffers for alternate calls, i.e. per CFG branch)."""
    from baselines.firstblockcache import (
        FirstBlockCacheBenchConfig,
        apply_firstblockcache,
        remove_firstblockcache,
    )

    def ours() -> torch.Tensor:
        apply_firstblockcache(model.pipe, FirstBlockCacheBenchConfig(threshold=value))
        try:
            return model.sample(prompt, seed, steps)
        finally:
            remove_firstblockcache(model.pipe)

    def theirs() -> torch.Tensor:
        with authors_cache(model, mods, value, alter):
            return model.sample(prompt, seed, steps)

    a, ta = traced(model, ours)
    b, tb = traced(model, theirs)
    n = model.branches
    extra: dict[str, Any] = {
        "enable_alter_cache": alter,
        "authors_default": alter == ADAPTERS[family(model)][1],
    }
    if n != 1 and not alter:
        extra["deliberate"] = SHARED
    return Comparison(
        "firstblockcache", model.name, REPO, commit, steps, KNOB, value, str(prompt), seed,
        float((a - b).abs().max()), psnr(a, b), ta.steps(n), tb.steps(n), extra=extra,
    )  # fmt: skip


def compare(src: AuthorsSource, model: Model, steps: int, values, prompts, seeds) -> list[Comparison]:
    """Their First Block Cache at `residual_diff_threshold` = our threshold (no warm-up, no TaylorSeer, no
    downsampling: their defaults), on the same prompts and seeds; with CFG as two calls (flux-tiny) both with
    their per-branch option `enable_alter_cache=True` (= diffusers' per-context state) and their default."""
    family(model)  # raises for a transformer without a checked adapter
    mods: dict[str, types.ModuleType] = load_para_attn(src)
    commit = src.commit()
    rows = []
    for value in values:
        for prompt, seed in zip(prompts, seeds, strict=True):
            for alter in (True, False) if model.branches == 2 else (False,):
                rows.append(compare_one(model, mods, commit, steps, value, prompt, seed, alter))
    return rows


def effect_at_saturation(model: Model, mods: dict, steps: int, prompts: int = 4) -> list[dict[str, Any]]:
    """What ParaAttention's shared default context changes at flux-tiny's least compute (threshold 1e3: every
    step after the first skips its tail, K ≈ 13.6 at T = 50, the nearest FBC gets to K = 13): PSNR against the
    full-compute output of ours (= their per-branch option) and of their default, same prompts and seeds as
    `effect.py` (evaluation prompts, seeds 100, 101, ...)."""
    from baselines.firstblockcache import (
        FirstBlockCacheBenchConfig,
        apply_firstblockcache,
        remove_firstblockcache,
    )

    rows = []
    for i, prompt in enumerate(model.spec.evaluation_prompts[:prompts]):
        seed = 100 + i
        ref = model.sample(prompt, seed, steps)
        apply_firstblockcache(model.pipe, FirstBlockCacheBenchConfig(threshold=1e3))
        try:
            ours, tr_ours = traced(model, partial(model.sample, prompt, seed, steps))
        finally:
            remove_firstblockcache(model.pipe)
        with authors_cache(model, mods, 1e3, alter=False):
            shared, tr_shared = traced(model, partial(model.sample, prompt, seed, steps))
        n = model.branches
        rows.append(
            {
                "method": "firstblockcache",
                "model": model.name,
                "T": steps,
                "knob": 1e3,
                "seed": seed,
                "psnr_ours": psnr(ours, ref),
                "psnr_authors_shared_default": psnr(shared, ref),
                "computed_ours": [len(tr_ours.steps(n, b)) for b in range(n)],
                "computed_shared": [len(tr_shared.steps(n, b)) for b in range(n)],
            }
        )
    return rows


if __name__ == "__main__":
    import json
    import os

    from .common import authors_source, load_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    m = load_model("flux-tiny")
    m_mods = load_para_attn(authors_source("/work/.mirror/chengzeyi+ParaAttention/repo", REPO))
    for r in effect_at_saturation(m, m_mods, 50):
        print(json.dumps(r), flush=True)
