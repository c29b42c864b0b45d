"""The dit-tiny fidelity machinery: the diffusers -> official DiT weight mapping and the timm stand-in, and (when the
authors' sources are fetched) their DiT class with our weights and their cached forwards against our ports.

The authors' repositories are never downloaded here: set `DPCACHE_AUTHORS_MIRROR` (a directory of `owner+name/repo`
git dirs, as `fetch` leaves them; default /work/.mirror) or those tests skip, saying which source is missing.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
import torch

from benchmarks.fidelity import dit_official

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 10


def _source(owner_name: str, repo: str):
    from benchmarks.fidelity.common import AuthorsSource

    root = Path(os.environ.get("DPCACHE_AUTHORS_MIRROR", "/work/.mirror")) / owner_name / "repo"
    if not (root / "HEAD").is_file():
        pytest.skip(f"{repo} not fetched at {root} (set DPCACHE_AUTHORS_MIRROR)")
    return AuthorsSource(root, repo)


@pytest.fixture(scope="module")
def dit_tiny():
    from benchmarks.fidelity.common import load_model

    return load_model("dit-tiny")


def test_state_dict_mapping_is_the_inverse_of_diffusers_conversion(dit_tiny):
    """q / k / v stacked into `qkv` in that order (convert_dit_to_diffusers.py chunks `qkv` into q, k, v), every
    official parameter present, each of our block / output weights used once."""
    tr = dit_tiny.pipe.transformer
    sd, out = tr.state_dict(), dit_official.official_state_dict(tr)
    n = len(tr.transformer_blocks)
    assert len([k for k in out if k.startswith("blocks.")]) == n * 10
    q, k, v = out["blocks.3.attn.qkv.weight"].chunk(3)
    assert torch.equal(q, sd["transformer_blocks.3.attn1.to_q.weight"])
    assert torch.equal(k, sd["transformer_blocks.3.attn1.to_k.weight"])
    assert torch.equal(v, sd["transformer_blocks.3.attn1.to_v.weight"])
    assert torch.equal(out["blocks.5.adaLN_modulation.1.bias"], sd["transformer_blocks.5.norm1.linear.bias"])
    assert torch.equal(out["final_layer.linear.weight"], sd["proj_out_2.weight"])
    assert out["pos_embed"].shape == (1, (tr.config.sample_size // 2) ** 2, tr.inner_dim)


def test_timm_stand_in_is_diffusers_arithmetic(dit_tiny):
    """The stand-in PatchEmbed / Mlp with dit-tiny's block weights give diffusers' patch projection and FFN."""
    timm = dit_official._timm_stand_in()["timm.models.vision_transformer"]
    tr = dit_tiny.pipe.transformer
    pe = timm.PatchEmbed(16, 2, 4, tr.inner_dim)
    pe.proj.load_state_dict(tr.pos_embed.proj.state_dict())
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pe(x) + tr.pos_embed.pos_embed, tr.pos_embed(x), rtol=0, atol=1e-6)
    ff = tr.transformer_blocks[2].ff
    mlp = timm.Mlp(tr.inner_dim, 4 * tr.inner_dim, act_layer=partial(torch.nn.GELU, approximate="tanh"))
    mlp.fc1.load_state_dict(ff.net[0].proj.state_dict())
    mlp.fc2.load_state_dict(ff.net[2].state_dict())
    h = torch.randn(2, 64, tr.inner_dim, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mlp(h), ff(h), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def taylorseer_dit(dit_tiny):
    src = _source("Shenyi-Z+TaylorSeer", "Shenyi-Z/TaylorSeer")
    mods = dit_official.load_dit_modules(src, "TaylorSeer-DiT", ("models", "cache_functions"))
    return src, mods, dit_official.build_official(mods["models"], dit_tiny.pipe.transformer)


def test_official_dit_equals_our_transformer(dit_tiny, taylorseer_dit):
    """Their DiT class with our weights, caching off, driven by our pipeline: the same image (< 1e-5)."""
    _, mods, official = taylorseer_dit
    prompt = dit_tiny.spec.evaluation_prompts[0]
    d = dit_official.uncached_difference(
        dit_tiny, official, mods["cache_functions"].cache_init, prompt, 0, STEPS
    )
    assert d < 1e-5


@pytest.mark.parametrize("setting", ["released", "flux-settings"])
def test_authors_taylorseer_dit_matches_our_port(dit_tiny, taylorseer_dit, setting):
    """Their TaylorSeer-DiT forwards as released vs our registered method (which runs their DiT settings), and
    both at the FLUX settings: same computed steps (fewer than T), images within 1e-4."""
    from benchmarks.fidelity import taylorseer_dit as ts

    src, _, _ = taylorseer_dit
    rows = ts.compare(src, dit_tiny, STEPS, (3.0,), dit_tiny.spec.evaluation_prompts[:1], [0])
    (row,) = [r for r in rows if r.extra["setting"] == setting]
    assert row.steps_equal and len(row.steps_ours) < STEPS
    assert row.max_abs < 1e-4 and "deliberate" not in row.extra


def test_toca_dit_rule_pieces():
    """DiT-ToCa's force_scheduler period, 'ToCa-ddim50' count, 2x2 bonus and cache ages, by hand."""
    from baselines import _toca_dit as d

    assert d.threshold(3, 49, 50, 0.07) == 5.0  # round(3 / (1.4 - 0.8 * 49 / 50)) = round(4.87)
    assert d.threshold(3, 0, 50, 0.07) == 2.0  # round(3 / 1.4)
    assert d.threshold(3, 15, 50, 0.07) == 2.0  # steps 10..19 (counted down): 2
    assert d.threshold(3, 15, 50, 0.0) == 3.0  # fresh ratio 0 (FORA): the interval
    assert d.block_full(49, 50, 3, None) and d.block_full(10, 50, 3, 5.0)
    assert not d.block_full(11, 50, 3, 5.0)
    assert d.fresh_count(0.07, 0, 49, 50, 64) == 0  # step factor < 0 early: clamped to 0
    assert d.fresh_count(0.07, 0, 0, 50, 64) == int(torch.tensor(0.07 * 0.8 * 3.0 * 2.5) * 64)
    score = torch.tensor([[0.1, 0.2, 0.9, 0.3] * 4])  # a 4x4 grid: 2x2 patches
    bonus = d._local_bonus(score)
    assert torch.allclose(bonus.sum() - score.sum(), torch.tensor(0.6 * (0.2 + 0.9) * 2))  # one max per patch
    ages = torch.zeros(1, 16, dtype=torch.int)
    fresh = d.select(torch.zeros(1, 16), ages, 3, 4)
    assert fresh.shape == (1, 4) and int(ages.sum()) == 12 and all(ages[0, fresh[0]] == 0)


@pytest.fixture(scope="module")
def toca_src():
    return _source("Shenyi-Z+ToCa", "Shenyi-Z/ToCa")


def test_authors_toca_dit_matches_our_dit_rule(dit_tiny, toca_src):
    """Their DiT-ToCa at its README's DDIM-50 settings vs our port with rule 'dit': same computed steps (fewer than
    T), images within 1e-4; their model uncached within 1e-5; the registered port (FLUX rule) differs, tagged."""
    from benchmarks.fidelity import toca_dit

    rows = toca_dit.compare(toca_src, dit_tiny, STEPS, (3.0,), dit_tiny.spec.evaluation_prompts[:1], [0])
    (dit,) = [r for r in rows if r.extra["setting"] == "dit-rule"]
    assert dit.extra["uncached_max_abs"] < 1e-5
    assert dit.steps_equal and len(dit.steps_ours) < STEPS
    assert dit.max_abs < 1e-4
    (released,) = [r for r in rows if r.extra["setting"] == "released"]
    assert released.max_abs > 1e-3 and "deliberate" in released.extra


def test_authors_taylorseer_dit_order0_is_our_fora(dit_tiny, taylorseer_dit):
    """TaylorSeer-DiT at max_order 0 / first_enhance 1 (FORA's rule) vs our FORA: same steps, images within 1e-4."""
    from benchmarks.fidelity import fora_dit

    src, _, _ = taylorseer_dit
    (row,) = fora_dit.compare(src, dit_tiny, STEPS, (3.0,), dit_tiny.spec.evaluation_prompts[:1], [0])
    assert row.steps_equal and row.steps_ours == [0, 3, 6, 9]
    assert row.max_abs < 1e-4
