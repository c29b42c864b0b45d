"""The hunyuan-video-tiny fidelity machinery: the official-HunyuanVideo weight mapping, attention stand-in and CFG
drivings, and (when the sources are fetched) the official model and the authors' cached forwards against our ports.

The authors' repositories are never downloaded here: set `DPCACHE_HUNYUAN_SRC` (Tencent/HunyuanVideo) and
`DPCACHE_AUTHORS_MIRROR` (a directory of `owner+name/repo` git dirs, as `fetch` leaves them; default
/work/.mirror) or those tests skip, saying which source is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from benchmarks.fidelity import hunyuan_official as hyo

pytestmark = pytest.mark.usefixtures("one_thread")


def _source(owner_name: str, repo: str):
    from benchmarks.fidelity.common import AuthorsSource

    root = Path(os.environ.get("DPCACHE_AUTHORS_MIRROR", "/work/.mirror")) / owner_name / "repo"
    if not (root / "HEAD").is_file():
        pytest.skip(f"{repo} not fetched at {root} (set DPCACHE_AUTHORS_MIRROR)")
    return AuthorsSource(root, repo)


def _hunyuan_source():
    from benchmarks.fidelity.common import AuthorsSourceMissing

    try:
        return hyo.hunyuan_source(_source("Tencent+HunyuanVideo", hyo.HY_REPO))
    except AuthorsSourceMissing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def hy_tiny():
    from benchmarks.fidelity.common import load_model

    return load_model("hunyuan-video-tiny")


def test_names_invert_diffusers_conversion():
    """The inverse of diffusers' convert_hunyuan_video_to_diffusers.py: renames, qkv / linear1 splits, refiner."""
    cases = {
        "img_in.proj.weight": ["x_embedder.proj.weight"],
        "time_in.mlp.2.bias": ["time_text_embed.timestep_embedder.linear_2.bias"],
        "vector_in.in_layer.weight": ["time_text_embed.text_embedder.linear_1.weight"],
        "double_blocks.1.img_mod.linear.weight": ["transformer_blocks.1.norm1.linear.weight"],
        "double_blocks.1.img_attn_qkv.bias": [f"transformer_blocks.1.attn.to_{p}.bias" for p in "qkv"],
        "double_blocks.1.txt_attn_qkv.weight": [
            f"transformer_blocks.1.attn.add_{p}_proj.weight" for p in "qkv"
        ],
        "double_blocks.1.txt_attn_k_norm.weight": ["transformer_blocks.1.attn.norm_added_k.weight"],
        "double_blocks.1.txt_mlp.fc2.weight": ["transformer_blocks.1.ff_context.net.2.weight"],
        "single_blocks.3.linear1.weight": [f"single_transformer_blocks.3.attn.to_{p}.weight" for p in "qkv"]
        + ["single_transformer_blocks.3.proj_mlp.weight"],
        "single_blocks.3.linear2.bias": ["single_transformer_blocks.3.proj_out.bias"],
        "single_blocks.3.modulation.linear.weight": ["single_transformer_blocks.3.norm.linear.weight"],
        "txt_in.input_embedder.weight": ["context_embedder.proj_in.weight"],
        "txt_in.t_embedder.mlp.0.weight": [
            "context_embedder.time_text_embed.timestep_embedder.linear_1.weight"
        ],
        "txt_in.c_embedder.linear_2.bias": ["context_embedder.time_text_embed.text_embedder.linear_2.bias"],
        "txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight": [
            f"context_embedder.token_refiner.refiner_blocks.0.attn.to_{p}.weight" for p in "qkv"
        ],
        "txt_in.individual_token_refiner.blocks.0.mlp.fc1.bias": [
            "context_embedder.token_refiner.refiner_blocks.0.ff.net.0.proj.bias"
        ],
        "txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.weight": [
            "context_embedder.token_refiner.refiner_blocks.0.norm_out.linear.weight"
        ],
        "final_layer.linear.weight": ["proj_out.weight"],
        "final_layer.adaLN_modulation.1.bias": ["norm_out.linear.bias"],
    }
    for official, diffusers in cases.items():
        assert hyo.diffusers_names(official) == diffusers, official


def test_state_dict_concatenates_and_swaps_the_final_modulation():
    sd = {
        f"transformer_blocks.0.attn.to_{p}.weight": torch.full((2, 3), float(i)) for i, p in enumerate("qkv")
    }
    sd["norm_out.linear.bias"] = torch.tensor([1.0, 1.0, 2.0, 2.0])  # diffusers: [scale, shift]
    out = hyo.official_state_dict(
        ["double_blocks.0.img_attn_qkv.weight", "final_layer.adaLN_modulation.1.bias"], sd
    )
    assert out["double_blocks.0.img_attn_qkv.weight"][:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert out["final_layer.adaLN_modulation.1.bias"].tolist() == [
        2.0,
        2.0,
        1.0,
        1.0,
    ]  # official: [shift, scale]


def test_varlen_sdpa_is_flash_varlen_over_two_segments():
    """Per row: [image + valid text] attend among themselves, the padding among itself (flash-attn varlen)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 2, 4, generator=g) for _ in range(3))
    cu = hyo.cpu_cu_seqlens(torch.tensor([[1, 1, 0], [1, 1, 1]]), 3)
    assert cu.tolist() == [0, 5, 6, 12, 12]
    out = hyo.varlen_sdpa(q, k, v, cu, 6, 2).view(2, 6, 2, 4)
    for b, segments in enumerate([[(0, 5), (5, 6)], [(0, 6)]]):
        for lo, hi in segments:
            w = torch.softmax(torch.einsum("lhd,mhd->hlm", q[b, lo:hi], k[b, lo:hi]) / 2.0, dim=-1)
            assert torch.allclose(out[b, lo:hi], torch.einsum("hlm,mhd->lhd", w, v[b, lo:hi]), atol=1e-6)


def test_without_cfg_calls_once_per_step(hy_tiny):
    assert hy_tiny.branches == 2
    assert hyo.without_cfg(hy_tiny).branches == 1


def test_official_model_equals_our_transformer(hy_tiny):
    """Same frames to ~1e-6, also when CFG runs batched as the official pipeline runs it."""
    hy, official = hyo.load_official(hy_tiny, _hunyuan_source())
    assert len(official.txt_in.individual_token_refiner.blocks) == 1
    prompt = hy_tiny.spec.evaluation_prompts[0]
    assert hyo.uncached_difference(hy_tiny, hy, official, prompt, 0, 6) < 1e-5
    assert hyo.uncached_difference(hy_tiny, hy, official, prompt, 0, 6, batched=True) < 1e-5
    with hyo.driving(hy_tiny, hy, official):
        theirs = hy_tiny.sample(prompt, 0, 2)
    assert (theirs - hy_tiny.sample(prompt, 1, 2)).abs().max() > 1e-2  # the seed matters: a real comparison


@pytest.mark.parametrize(
    ("module", "owner_name", "repo", "value"),
    [
        ("teacache_hunyuan", "ali-vilab+TeaCache", "ali-vilab/TeaCache", 0.3),
        ("dicache_hunyuan", "Bujiazi+DiCache", "Bujiazi/DiCache", 0.4),
        ("magcache_hunyuan", "Zehong-Ma+MagCache", "Zehong-Ma/MagCache", 0.24),
    ],
)
def test_authors_hunyuan_forward_matches_our_port(hy_tiny, module, owner_name, repo, value):
    """Their forward with one state per CFG branch vs our port: same computed steps (both branches), frames
    within 1e-4, and the knob really skips."""
    import importlib

    adapter = importlib.import_module(f"benchmarks.fidelity.{module}")
    src = _source(owner_name, repo)
    if module != "dicache_hunyuan":
        _hunyuan_source()
    (row,) = adapter.compare_mode(src, hy_tiny, 10, [value], [hy_tiny.spec.evaluation_prompts[0]], [0])
    assert len(row.steps_ours) < 10
    assert row.steps_equal and row.extra["steps_ours_uncond"] == row.extra["steps_theirs_uncond"]
    assert row.max_abs < 1e-4


def test_authors_easycache_hunyuan_matches_without_cfg(hy_tiny):
    """Their forward and our port without CFG (one call per step, as they ran it) agree; with the official
    pipeline's batched CFG the rows carry the deliberate difference."""
    from benchmarks.fidelity import easycache_hunyuan

    src = _source("H-EmbodVis+EasyCache", easycache_hunyuan.REPO)
    _hunyuan_source()
    rows = easycache_hunyuan.compare(src, hy_tiny, 10, [0.3], [hy_tiny.spec.evaluation_prompts[0]], [0])
    plain = [r for r in rows if "deliberate" not in r.extra]
    assert len(plain) == 1 and len(rows) == 2
    assert len(plain[0].steps_ours) < 10 and plain[0].steps_equal and plain[0].max_abs < 1e-4


def test_authors_taylorseer_hunyuan_matches_our_port(hy_tiny):
    """Their TaylorSeer-HunyuanVideo model as released (O = 1 / first 1) vs our registered method (which runs those
    settings on HunyuanVideo), and both at the FLUX settings (O = 2 / first 3): same steps, frames within 1e-4."""
    from benchmarks.fidelity import taylorseer_hunyuan

    src = _source("Shenyi-Z+TaylorSeer", taylorseer_hunyuan.REPO)
    rows = taylorseer_hunyuan.compare(src, hy_tiny, 10, [3.0], [hy_tiny.spec.evaluation_prompts[0]], [0])
    assert [r.extra["setting"] for r in rows] == ["released", "flux-settings"]
    for r in rows:
        assert "deliberate" not in r.extra
        assert r.steps_equal and len(r.steps_ours) < 10 and r.max_abs < 1e-4
        assert r.extra["uncached_max_abs"] < 1e-5


def test_authors_fora_hunyuan_matches_our_port(hy_tiny):
    """Their TaylorSeer-HunyuanVideo model in its FORA mode ('original': cached steps take the 'ToCa' path with no
    fresh tokens, which the trace does not count as computed) vs our FORA: same steps, frames within 1e-4."""
    from benchmarks.fidelity import fora_hunyuan

    src = _source("Shenyi-Z+TaylorSeer", fora_hunyuan.REPO)
    (row,) = fora_hunyuan.compare(src, hy_tiny, 10, [3.0], [hy_tiny.spec.evaluation_prompts[0]], [0])
    assert row.steps_ours == [0, 3, 6, 9] and row.steps_equal
    assert row.extra["steps_ours_uncond"] == row.extra["steps_theirs_uncond"] and row.max_abs < 1e-4
