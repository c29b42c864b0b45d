"""The wan-tiny fidelity machinery: the official-WanModel weight mapping and attention, the EasyCache CFG rule, and
(when the authors' sources are fetched) the official model and the authors' cached forwards against our ports.

The authors' repositories are never downloaded here: set `DPCACHE_WAN_SRC` (Wan-Video/Wan2.1) and
`DPCACHE_AUTHORS_MIRROR` (a directory of `owner+name/repo` git dirs, as `fetch` leaves them; default
/work/.mirror) or those tests skip, saying which source is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from benchmarks.fidelity import wan_official

pytestmark = pytest.mark.usefixtures("one_thread")


def _mirror(owner_name: str) -> Path:
    return Path(os.environ.get("DPCACHE_AUTHORS_MIRROR", "/work/.mirror")) / owner_name / "repo"


def _source(owner_name: str, repo: str):
    from benchmarks.fidelity.common import AuthorsSource

    root = _mirror(owner_name)
    if not (root / "HEAD").is_file():
        pytest.skip(f"{repo} not fetched at {root} (set DPCACHE_AUTHORS_MIRROR)")
    return AuthorsSource(root, repo)


def _wan_source():
    from benchmarks.fidelity.common import AuthorsSourceMissing

    try:
        return wan_official.wan_source(_source("Wan-Video+Wan2.1", wan_official.WAN_REPO))
    except AuthorsSourceMissing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def wan_tiny():
    from benchmarks.fidelity.common import load_model

    return load_model("wan-tiny")


def test_state_dict_mapping_inverts_diffusers_conversion():
    """The inverse of diffusers' convert_wan_to_diffusers.py renaming, incl. its norm2 / norm3 swap."""
    t = torch.zeros(1)
    names = {
        "condition_embedder.time_embedder.linear_1.weight": "time_embedding.0.weight",
        "condition_embedder.text_embedder.linear_2.bias": "text_embedding.2.bias",
        "condition_embedder.time_proj.weight": "time_projection.1.weight",
        "scale_shift_table": "head.modulation",
        "proj_out.bias": "head.head.bias",
        "patch_embedding.weight": "patch_embedding.weight",
        "blocks.3.scale_shift_table": "blocks.3.modulation",
        "blocks.3.attn1.to_q.weight": "blocks.3.self_attn.q.weight",
        "blocks.3.attn1.to_out.0.bias": "blocks.3.self_attn.o.bias",
        "blocks.3.attn1.norm_k.weight": "blocks.3.self_attn.norm_k.weight",
        "blocks.3.attn2.to_v.bias": "blocks.3.cross_attn.v.bias",
        "blocks.3.norm2.weight": "blocks.3.norm3.weight",
        "blocks.3.ffn.net.0.proj.weight": "blocks.3.ffn.0.weight",
        "blocks.3.ffn.net.2.bias": "blocks.3.ffn.2.bias",
    }
    assert wan_official.official_state_dict(dict.fromkeys(names, t)) == {v: t for v in names.values()}


def test_sdpa_attention_is_flash_attentions_contract():
    """[B, L, N, D] in and out, keys beyond k_lens masked (as flash-attn's varlen call)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 2, 4, generator=g) for _ in range(3))
    k_lens = torch.tensor([5, 3])
    out = wan_official.sdpa_attention(q, k, v, k_lens=k_lens)
    assert out.shape == q.shape
    for b, n in enumerate(k_lens.tolist()):
        w = torch.softmax(torch.einsum("lhd,mhd->hlm", q[b], k[b, :n]) / 2.0, dim=-1)
        assert torch.allclose(out[b], torch.einsum("hlm,mhd->lhd", w, v[b, :n]), atol=1e-6)


def test_easycache_unconditional_branch_follows_the_conditional(wan_tiny):
    """The authors' rule: the conditional branch decides, the unconditional one computes the same steps."""
    from baselines.base import get_method
    from benchmarks.fidelity.common import traced

    method = get_method("easycache")
    prompt = wan_tiny.spec.evaluation_prompts[0]

    def run():
        method.apply(wan_tiny.pipe, 0.5, 10, None)
        try:
            return wan_tiny.sample(prompt, 0, 10)
        finally:
            method.remove(wan_tiny.pipe)

    _, trace = traced(wan_tiny, run)
    cond, uncond = trace.steps(2, 0), trace.steps(2, 1)
    assert wan_tiny.branches == 2
    assert len(cond) < 10, "the knob must skip steps for this test to mean anything"
    assert cond == uncond


def test_official_model_equals_our_transformer(wan_tiny):
    src = _wan_source()
    _, official = wan_official.load_official(wan_tiny, src)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 8, 8, generator=g)
    ctx = torch.randn(1, wan_official.text_len(wan_tiny), 32, generator=g)
    t = torch.tensor([700.0])
    with torch.no_grad():
        ours = wan_tiny.pipe.transformer(x, t, ctx, return_dict=False)[0]
        theirs = wan_official._diffusers_call(official)(x, t, ctx, return_dict=False)[0]
    assert ours.abs().max() > 0.1
    assert (ours - theirs).abs().max() < 1e-5
    assert (
        wan_official.uncached_difference(wan_tiny, official, wan_tiny.spec.evaluation_prompts[0], 0, 6) < 1e-5
    )


@pytest.mark.parametrize(
    ("module", "owner_name", "repo", "value"),
    [
        ("teacache_wan", "ali-vilab+TeaCache", "ali-vilab/TeaCache", 0.2),
        ("easycache", "H-EmbodVis+EasyCache", "H-EmbodVis/EasyCache", 0.2),
        ("dicache_wan", "Bujiazi+DiCache", "Bujiazi/DiCache", 0.2),
    ],
)
def test_authors_wan_forward_matches_our_port(wan_tiny, module, owner_name, repo, value):
    """The authors' cached forward on the official model vs our port: same computed steps (both branches),
    frames within 1e-4, and the knob really skips."""
    import importlib

    adapter = importlib.import_module(f"benchmarks.fidelity.{module}")
    src = _source(owner_name, repo)
    if module != "dicache_wan":
        _wan_source()
    prompt = wan_tiny.spec.evaluation_prompts[0]
    (row,) = adapter.compare(src, wan_tiny, 10, [value], [prompt], [0])
    assert len(row.steps_ours) < 10
    assert row.steps_equal and row.extra["steps_ours_uncond"] == row.extra["steps_theirs_uncond"]
    assert row.max_abs < 1e-4


def test_authors_taylorseer_wan_matches_our_port(wan_tiny):
    from benchmarks.fidelity import taylorseer_wan

    src = _source("Shenyi-Z+TaylorSeer", "Shenyi-Z/TaylorSeer")
    rows = taylorseer_wan.compare(src, wan_tiny, 10, [3.0], [wan_tiny.spec.evaluation_prompts[0]], [0])
    assert len(rows) == 2  # the registered method (their Wan settings) and both sides at the FLUX settings
    for r in rows:
        assert r.steps_equal and len(r.steps_ours) < 10 and r.max_abs < 1e-4
