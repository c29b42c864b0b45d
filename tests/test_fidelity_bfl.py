"""The BFL-FLUX fidelity adapter (benchmarks/fidelity/bfl_flux.py) and the Δ-DiT re-implementation schedule."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch

from baselines.delta_dit import DeltaDiTConfig, DeltaDiTHook
from benchmarks.fidelity.bfl_flux import bfl_state_dict, flux_params

# the fetched Shenyi-Z/TaylorSeer (a checkout or bare git dir); the checks that run the authors' code skip without it
AUTHORS = Path(os.environ.get("DPCACHE_TAYLORSEER_SRC", "/work/.mirror/Shenyi-Z+TaylorSeer/repo"))


@pytest.fixture(scope="module")
def flux_tiny():
    from benchmarks.fidelity.common import load_model

    torch.set_num_threads(1)
    return load_model("flux-tiny")


def _diffusers_conversion(inner_dim: int):
    """diffusers' own BFL → diffusers converter with its hard-coded FLUX.1 width (3072) set to `inner_dim`."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers as conv

    code = conv.__code__
    assert 3072 in code.co_consts, "diffusers' converter changed: no hard-coded inner_dim to replace"
    consts = tuple(inner_dim if c == 3072 else c for c in code.co_consts)
    return types.FunctionType(code.replace(co_consts=consts), conv.__globals__, conv.__name__)


def test_bfl_state_dict_is_the_inverse_of_diffusers_conversion(flux_tiny) -> None:
    tr = flux_tiny.pipe.transformer
    bfl = bfl_state_dict(tr)
    assert "single_blocks.0.linear1.weight" in bfl and "double_blocks.0.img_attn.qkv.weight" in bfl
    back = _diffusers_conversion(tr.inner_dim)(dict(bfl))
    original = tr.state_dict()
    assert set(back) == set(original)
    for k, v in original.items():
        assert torch.equal(back[k], v), k


def test_flux_params_of_flux_tiny(flux_tiny) -> None:
    p = flux_params(flux_tiny.pipe.transformer)
    assert (p["depth"], p["depth_single_blocks"], p["hidden_size"], p["mlp_ratio"]) == (4, 8, 56, 4.0)
    assert sum(p["axes_dim"]) == p["hidden_size"] // p["num_heads"]


def _authors_kinds(interval: int, steps: int) -> list[str]:
    """The step types of TaylorSeer-FLUX's `cal_type` in its 'Delta' mode (first step only, fresh ratio 0)."""
    kinds, counter = [], 0
    for step in range(steps):
        if step == 0 or counter == interval - 1:
            kinds.append("full")
            counter = 0
        else:
            kinds.append("reuse" if counter % 2 == 1 else "delta")
            counter += 1
    return kinds


@pytest.mark.parametrize("interval", [1, 2, 3, 4, 7])
def test_reimpl_reuse_steps_follow_the_authors_step_classifier(interval: int) -> None:
    cfg = DeltaDiTConfig(
        interval=interval, num_inference_steps=20, stage_switch=False, reimpl_reuse_steps=True
    )
    hook = DeltaDiTHook(None, cfg)
    assert [hook.step_kind(s) for s in range(20)] == _authors_kinds(interval, 20)
    plain = DeltaDiTHook(None, DeltaDiTConfig(interval=interval, num_inference_steps=20, stage_switch=False))
    assert "reuse" not in [plain.step_kind(s) for s in range(20)]


@pytest.mark.skipif(
    not AUTHORS.exists(), reason=f"Shenyi-Z/TaylorSeer not fetched at {AUTHORS} (DPCACHE_TAYLORSEER_SRC)"
)
@pytest.mark.parametrize(("method", "value"), [("toca", 3.0), ("delta_dit", 3.0)])
def test_ports_match_the_authors_bfl_flux(flux_tiny, method: str, value: float) -> None:
    """Our ToCa / Δ-DiT (set to the re-implementation) equal the authors' BFL FLUX code to 1e-4, same steps."""
    import importlib

    pytest.importorskip("einops")
    from benchmarks.fidelity.bfl_flux import compare_mode
    from benchmarks.fidelity.common import authors_source

    adapter = importlib.import_module(f"benchmarks.fidelity.{method}")
    src = authors_source(str(AUTHORS), adapter.REPO)
    sides = [adapter._ours()] if method == "toca" else adapter.sides()[-1:]
    mode = "ToCa" if method == "toca" else "Delta"
    prompt = flux_tiny.spec.evaluation_prompts[0]
    rows = compare_mode(src, flux_tiny, 10, [value], [prompt], [0], method=method, mode=mode, sides=sides)
    (row,) = rows
    assert row.steps_equal and len(row.steps_ours) < 10, (row.steps_ours, row.steps_theirs)
    assert row.max_abs < 1e-4, row.line()


def test_reimpl_reuse_steps_skip_every_block_on_reuse_steps(flux_tiny) -> None:
    """Reuse steps run no attention anywhere (double stream included); Δ steps run the double stream only."""
    from baselines.delta_dit import apply_delta_dit, remove_delta_dit

    tr = flux_tiny.pipe.transformer
    ran: list[set[str]] = []
    watch = {
        "double": tr.transformer_blocks[0].attn.to_q,
        "single": tr.single_transformer_blocks[-1].attn.to_q,
    }
    hooks = [tr.register_forward_pre_hook(lambda *a: ran.append(set()))]
    hooks += [m.register_forward_hook(lambda *a, n=n: ran[-1].add(n)) for n, m in watch.items()]
    cfg = DeltaDiTConfig(interval=4, num_inference_steps=10, stage_switch=False, reimpl_reuse_steps=True)
    apply_delta_dit(flux_tiny.pipe, cfg)
    try:
        reused = flux_tiny.sample(flux_tiny.spec.evaluation_prompts[0], 0, 10)
    finally:
        remove_delta_dit(flux_tiny.pipe)
        for h in hooks:
            h.remove()
    cond = ran[:: flux_tiny.branches]  # the conditional branch's calls
    expected = {"full": {"double", "single"}, "delta": {"double"}, "reuse": set()}
    assert [sorted(r) for r in cond] == [sorted(expected[k]) for k in _authors_kinds(4, 10)]
    plain = DeltaDiTConfig(interval=4, num_inference_steps=10, stage_switch=False)
    apply_delta_dit(flux_tiny.pipe, plain)
    try:
        out = flux_tiny.sample(flux_tiny.spec.evaluation_prompts[0], 0, 10)
    finally:
        remove_delta_dit(flux_tiny.pipe)
    assert (out - reused).abs().max() > 1e-3  # the reuse steps change the sample
