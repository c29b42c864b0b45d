"""Blocks wrapped by `torch.compile` are cached as the plain blocks: hooks look a block up by its own class."""

from __future__ import annotations

import pytest
import torch
from tiny_pipelines import build_family, generators

from baselines.teacache import IDENTITY, TeaCacheConfig, apply_teacache, remove_teacache
from dpcache import DPCacheConfig, apply_dpcache, remove_dpcache
from dpcache.adapters import block_layout
from dpcache.diffusers_internals import unwrap_module

T = 6
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")

METHODS = {
    "dpcache": (
        lambda pipe: apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, schedule=[0, 1, 3])),
        remove_dpcache,
    ),
    "teacache": (
        lambda pipe: apply_teacache(
            pipe, TeaCacheConfig(T, 1.0, IDENTITY, "identity", first_full_steps=1, last_full_steps=1)
        ),
        remove_teacache,
    ),
}


@pytest.fixture(scope="module")
def flux():
    return build_family("flux")


def _run(pipe, call, method: str) -> torch.Tensor:
    apply, remove = METHODS[method]
    apply(pipe)
    try:
        return call(generators(0), T)
    finally:
        remove(pipe)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_compiled_blocks_give_the_uncompiled_cached_output(flux, method):
    pipe, call = flux
    uncached = call(generators(0), T)
    cached = _run(pipe, call, method)
    assert not torch.equal(cached, uncached), (
        f"{method} skipped nothing at T={T}: the test would prove nothing"
    )
    transformer = pipe.transformer
    originals = {name: list(getattr(transformer, name)) for name in BLOCK_LISTS}
    try:
        for name in BLOCK_LISTS:
            blocks = getattr(transformer, name)
            for i, block in enumerate(originals[name]):
                blocks[i] = torch.compile(block, backend="eager")
        compiled = block_layout(transformer).blocks
        assert all(unwrap_module(b) is not b for b in compiled), "the blocks are not compiled wrappers"
        out = _run(pipe, call, method)
    finally:
        for name in BLOCK_LISTS:
            blocks = getattr(transformer, name)
            for i, block in enumerate(originals[name]):
                blocks[i] = block
    assert torch.equal(out, cached), (out - cached).abs().max()
