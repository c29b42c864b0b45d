"""Calibration on a real (tiny, random-weight) FluxPipeline: features, resumption, metadata checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpcache import (
    CostTensor,
    CostTensorMismatchError,
    DPCacheConfig,
    TaylorPredictor,
    apply_dpcache,
    calibrate,
    calibrate_predictors,
    load_prompts,
    remove_dpcache,
)
from dpcache.calibration import record_features
from dpcache.pact import cost_tensor_one

T = 8


@pytest.fixture(scope="module")
def flux():
    from harness.zoo import flux_tiny

    pipe = flux_tiny.build_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    base = flux_tiny.call_kwargs("a red 1 on a black background")
    base.pop("prompt")
    return pipe, base


def test_records_one_feature_per_step_on_host(flux):
    pipe, base = flux
    # an uncached CFG call first: diffusers then caches the hook tree the recorder must still be part of
    pipe(prompt="a red 1", num_inference_steps=2, generator=torch.Generator().manual_seed(0), **base)
    feats = record_features(
        pipe,
        lambda: pipe(
            prompt="a red 1", num_inference_steps=T, generator=torch.Generator().manual_seed(0), **base
        ),
    )
    assert len(feats) == T
    assert all(f.device.type == "cpu" for f in feats)
    assert feats[0].shape[-1] == pipe.transformer.inner_dim
    assert not torch.equal(feats[0], feats[-1])
    assert not pipe.transformer.single_transformer_blocks[-1]._diffusers_hook.hooks, (
        "recorder must be removed"
    )


def test_calibrate_matches_features_and_resumes(flux, tmp_path):
    pipe, base = flux
    prompts = ["a red 1 on a black background", "a blue 2 on a white background"]
    calls = {"n": 0}
    original = type(pipe).__call__

    def counting(self, *a, **k):
        calls["n"] += 1
        if calls.get("fail_at") == calls["n"]:
            raise KeyboardInterrupt("killed")
        return original(self, *a, **k)

    type(pipe).__call__ = counting
    try:
        calls["fail_at"] = 2
        with pytest.raises(KeyboardInterrupt):
            calibrate(
                pipe,
                prompts,
                num_inference_steps=T,
                call_kwargs=base,
                work_dir=tmp_path,
                progress=False,
                model_id="flux-tiny-random",
            )
        assert len(list(tmp_path.glob("*.npz"))) == 1
        assert not list(tmp_path.glob("*.tmp")), "a killed calibration leaves no partial file"
        calls.update(n=0, fail_at=None)
        ct = calibrate(
            pipe,
            prompts,
            num_inference_steps=T,
            call_kwargs=base,
            work_dir=tmp_path,
            progress=False,
            model_id="flux-tiny-random",
            out=tmp_path / "ct.safetensors",
        )
        assert calls["n"] == 1, "the prompt already done must not run again"
    finally:
        type(pipe).__call__ = original
    assert ct.meta.seeds == [42, 43] and len(ct.meta.prompt_hashes) == 2
    assert ct.meta.num_steps == T and ct.meta.model_id == "flux-tiny-random"

    per_prompt = []
    for i, prompt in enumerate(prompts):
        feats = record_features(
            pipe,
            lambda p=prompt, s=42 + i: pipe(
                prompt=p, num_inference_steps=T, generator=torch.Generator("cpu").manual_seed(s), **base
            ),
        )
        per_prompt.append(cost_tensor_one(feats, TaylorPredictor(order=2)))
    expected = np.where(np.isfinite(per_prompt[0]), (per_prompt[0] + per_prompt[1]) / 2, np.inf)
    assert np.allclose(ct.cost, expected, equal_nan=False)
    loaded = CostTensor.load(tmp_path / "ct.safetensors")
    assert np.array_equal(loaded.cost, ct.cost)


def test_several_predictors_from_one_run_per_prompt_equal_separate_calibrations(flux, tmp_path):
    """`calibrate_predictors` samples each prompt once for all predictors; each tensor is bit-identical to
    its own `calibrate`, and a resumed run reuses every predictor's parts."""
    pipe, base = flux
    prompts = ["a red 1 on a black background", "a blue 2 on a white background"]
    preds = [TaylorPredictor(order=o) for o in (2, 1, 0)]
    calls = {"n": 0}
    original = type(pipe).__call__

    def counting(self, *a, **k):
        calls["n"] += 1
        return original(self, *a, **k)

    kw = dict(num_inference_steps=T, call_kwargs=base, progress=False, model_id="flux-tiny-random")
    type(pipe).__call__ = counting
    try:
        together = calibrate_predictors(pipe, prompts, preds, work_dir=tmp_path / "w", **kw)
        assert calls["n"] == len(prompts)
        again = calibrate_predictors(pipe, prompts, preds, work_dir=tmp_path / "w", **kw)
        assert calls["n"] == len(prompts), "every predictor's parts are reused"
    finally:
        type(pipe).__call__ = original
    for p, ct, ct2 in zip(preds, together, again):
        alone = calibrate(pipe, prompts, predictor=p, **kw)
        assert ct.meta.predictor_order == p.order == alone.meta.predictor_order
        assert np.array_equal(ct.cost, alone.cost) and np.array_equal(ct2.cost, alone.cost)
    assert not np.array_equal(together[0].cost, together[2].cost)


def test_calibrated_tensor_drives_the_hook_and_refuses_other_configs(flux, tmp_path):
    pipe, base = flux
    ct = calibrate(
        pipe, ["a green 3 on a red background"], num_inference_steps=T, call_kwargs=base, progress=False
    )
    keys = apply_dpcache(pipe, DPCacheConfig(num_inference_steps=T, cost=ct, budget=5))
    try:
        assert len(keys) == 5 and keys[:3] == (0, 1, 2)
        out = pipe(
            prompt="a green 3", num_inference_steps=T, generator=torch.Generator().manual_seed(1), **base
        )
        assert out.images[0] is not None
    finally:
        remove_dpcache(pipe)
    with pytest.raises(CostTensorMismatchError, match="num_steps: expected 12, found 8"):
        DPCacheConfig(num_inference_steps=12, cost=ct, budget=5).resolve_schedule()
    with pytest.raises(CostTensorMismatchError, match="predictor_order: expected 1, found 2"):
        DPCacheConfig(num_inference_steps=T, cost=ct, budget=5, order=1).resolve_schedule()


def test_prompt_sets_follow_the_released_rules(tmp_path):
    draw = load_prompts("drawbench", "fix", 10)
    assert len(draw) == 10
    full = load_prompts("drawbench", "fix", None)
    assert len(full) == 200 and draw == full[::20]
    parti = load_prompts("parti", "random", 5)
    assert len(parti) == 5 and len(set(parti)) == 5 and parti == load_prompts("parti", "random", 5)
    f = tmp_path / "p.txt"
    f.write_text("one\n\ntwo\n")
    assert load_prompts(str(f), size=None) == ["one", "two"]
    with pytest.raises(FileNotFoundError):
        load_prompts(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="sampling rule"):
        load_prompts("drawbench", "every", 3)


def test_parts_are_keyed_by_every_setting_that_changes_them(flux, tmp_path):
    """Issue 15 #1: a 16x16 calibration into the work dir of a 32x32 one reused its parts (bit-identical
    tensor in 6 s). Every setting that changes a part's content must change its key."""
    pipe, base = flux
    prompts = ["a red 1 on a black background"]
    common = dict(num_inference_steps=4, work_dir=tmp_path, progress=False, model_id="flux-tiny-random")
    big = calibrate(pipe, prompts, call_kwargs={**base, "height": 32, "width": 32}, **common)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    small = calibrate(pipe, prompts, call_kwargs={**base, "height": 16, "width": 16}, **common)
    assert len(list(tmp_path.glob("*.npz"))) == 2, "the 16x16 run must compute its own part"
    assert not np.array_equal(big.cost, small.cost)
    again = calibrate(pipe, prompts, call_kwargs={**base, "height": 16, "width": 16}, **common)
    assert np.array_equal(again.cost, small.cost) and len(list(tmp_path.glob("*.npz"))) == 2
    # guidance, weights and the predictor order are in the key too
    calibrate(pipe, prompts, call_kwargs={**base, "height": 16, "width": 16, "true_cfg_scale": 2.0}, **common)
    assert len(list(tmp_path.glob("*.npz"))) == 3
    calibrate(pipe, prompts, call_kwargs={**base, "height": 16, "width": 16}, weights_id="other", **common)
    assert len(list(tmp_path.glob("*.npz"))) == 4
    calibrate(
        pipe,
        prompts,
        call_kwargs={**base, "height": 16, "width": 16},
        predictor=TaylorPredictor(order=1),
        **common,
    )
    assert len(list(tmp_path.glob("*.npz"))) == 5


def test_a_part_that_does_not_match_its_key_is_never_reused(flux, tmp_path):
    from dpcache import calibration as cal

    pipe, base = flux
    prompts = ["a blue 2 on a white background"]
    common = dict(num_inference_steps=4, work_dir=tmp_path, progress=False, model_id="m", call_kwargs=base)
    first = calibrate(pipe, prompts, **common)
    (part,) = tmp_path.glob("*.npz")
    np.savez(part, cost=np.zeros_like(first.cost), key=np.array("another key"))  # e.g. an old-format part
    with pytest.warns(UserWarning, match="other settings"):
        second = calibrate(pipe, prompts, **common)
    assert np.array_equal(second.cost, first.cost)
    part.write_bytes(part.read_bytes()[:40])  # truncated
    with pytest.warns(UserWarning, match="unreadable calibration part"):
        third = calibrate(pipe, prompts, **common)
    assert np.array_equal(third.cost, first.cost)
    assert cal.weights_fingerprint(pipe) == cal.weights_fingerprint(pipe)
