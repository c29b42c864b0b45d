"""Metrics: PSNR/SSIM/MS-SSIM/LPIPS conventions, Unavailable reasons, scorers in a separate process."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import eval_env, metrics
from harness.metrics import MetricResult, Unavailable

FAKE_SCORER = Path(__file__).resolve().parent / "fake_eval_scorer.py"


def _imgs(n=2, c=3, h=16, w=16, f=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, c, h, w) if f is None else (n, f, c, h, w)
    return torch.rand(shape, generator=g)


def test_psnr_identical_is_capped_at_100():
    x = _imgs()
    r = metrics.psnr(x, x.clone())
    assert isinstance(r, MetricResult) and r.mean == 100.0 and r.per_item == (100.0, 100.0)


def test_psnr_known_value_and_per_sample():
    ref = torch.zeros(2, 1, 4, 4)
    pred = ref.clone()
    pred[0] += 0.1  # mse 0.01 → 20 dB
    r = metrics.psnr(pred, ref)
    assert r.per_item[0] == pytest.approx(20.0) and r.per_item[1] == 100.0
    assert r.mean == pytest.approx(60.0)  # capped before averaging


def test_psnr_video_per_frame_then_averaged():
    ref = torch.zeros(1, 2, 1, 4, 4)
    pred = ref.clone()
    pred[0, 0] += 0.1  # frame 0: 20 dB, frame 1: identical → 100
    r = metrics.psnr(pred, ref)
    assert r.per_item == pytest.approx((60.0,))


def test_psnr_db_is_one_function_for_tensors_and_arrays():
    ref = np.zeros((4, 4), dtype=np.float32)
    pred = ref + np.float32(0.1)  # mse 0.01: 20 dB on [0, 1]
    assert metrics.psnr_db(pred, ref) == pytest.approx(20.0)
    assert metrics.psnr_db(torch.from_numpy(pred), torch.from_numpy(ref)) == pytest.approx(20.0)
    assert metrics.psnr_db(2 * pred, 2 * ref, data_range=2.0) == pytest.approx(20.0)
    assert metrics.psnr_db(ref, ref) == metrics.PSNR_CAP_DB == 100.0
    assert metrics.psnr_db(ref, ref, cap_db=None) == float("inf")
    assert metrics.psnr_db(ref + np.float32(1e-7), ref, cap_db=None) > 100.0  # the cap is what stops it


def test_range_and_shape_checked():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.psnr(_imgs() * 2 - 1, _imgs())
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(_imgs(h=8), _imgs())


def test_ssim_and_ms_ssim_size_rule():
    a, b = _imgs(), _imgs(seed=1)
    s = metrics.ssim(a, a)
    assert isinstance(s, MetricResult) and s.mean == pytest.approx(1.0, abs=1e-5)
    assert metrics.ssim(a, b).mean < 0.5
    small = metrics.ms_ssim(a, b)
    assert isinstance(small, Unavailable) and "too small for MS-SSIM" in small.reason
    big = _imgs(n=1, h=176, w=176)
    r = metrics.ms_ssim(big, big)
    assert isinstance(r, MetricResult) and r.mean == pytest.approx(1.0, abs=1e-4)


def test_video_ssim_shape():
    v = _imgs(n=2, f=3)
    r = metrics.ssim(v, v)
    assert len(r.per_item) == 2


def test_lpips_unavailable_with_reason_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache
    r = metrics.lpips(_imgs(), _imgs(seed=1))
    assert isinstance(r, Unavailable)
    assert "torchvision" in r.reason or "AlexNet" in r.reason
    assert not any(tmp_path.rglob("*.pth"))


def test_fidelity_bundle_keys():
    out = metrics.fidelity_metrics(_imgs(), _imgs(seed=1))
    assert set(out) == {"psnr", "ssim", "ms_ssim", "lpips"}
    assert isinstance(out["ms_ssim"], Unavailable)


def test_prompt_metrics_unavailable_here(monkeypatch):
    monkeypatch.delenv(eval_env.EVAL_PYTHON_ENV, raising=False)
    imgs, prompts = _imgs(), ["a cat", "a dog"]
    clip = metrics.clip_score(imgs, prompts, model="nonexistent/clip-model")
    assert isinstance(clip, Unavailable) and "not in the local Hugging Face cache" in clip.reason
    ir = metrics.image_reward(imgs, prompts)
    assert isinstance(ir, Unavailable) and "evaluation environment" in ir.reason
    vb = metrics.vbench(_imgs(f=2), prompts)
    assert isinstance(vb, Unavailable) and "VBench" in vb.reason
    fid = metrics.fid(imgs, imgs)
    assert isinstance(fid, Unavailable) and ("torch-fidelity" in fid.reason or "Inception" in fid.reason)


class _Const:
    name = "const"

    def available(self):
        return True, ""

    def score(self, images, prompts):
        return [float(len(p)) for p in prompts]


def test_scorer_protocol_and_run_scorer():
    assert isinstance(_Const(), metrics.Scorer)
    r = metrics.run_scorer(_Const(), _imgs(), ["ab", "abcd"])
    assert r.per_item == (2.0, 4.0) and r.mean == 3.0


def _fake(weights_dir) -> eval_env.SubprocessScorer:
    return eval_env.SubprocessScorer(
        "fake_reward", FAKE_SCORER, sys.executable, str(weights_dir), timeout=120
    )


def test_subprocess_scorer_weights_missing(tmp_path):
    r = metrics.run_scorer(_fake(tmp_path), _imgs(), ["a", "b"])
    assert isinstance(r, Unavailable) and "fake model weights missing" in r.reason


def test_subprocess_scorer_scores_through_json_protocol(tmp_path):
    np.save(tmp_path / "fake_model.npy", np.array([1.0, 0.0, 0.0]))
    imgs = torch.zeros(2, 3, 8, 8)
    imgs[0, 0] = 0.5
    imgs[1, 0] = 1.0
    scorer = _fake(tmp_path)
    assert scorer.available() == (True, f"fake model from {tmp_path / 'fake_model.npy'}")
    r = metrics.run_scorer(scorer, imgs, ["ab", "abcd"])
    assert isinstance(r, MetricResult)
    assert r.per_item == pytest.approx((0.52, 1.04)) and r.mean == pytest.approx(0.78)
    assert scorer.last_details["model"] == "fake"
    video = metrics.run_scorer(scorer, torch.ones(1, 2, 3, 4, 4), ["x"])  # (N,F,C,H,W) goes over as FCHW
    assert video.per_item == pytest.approx((1.01,))


def test_subprocess_scorer_failure_is_unavailable_not_a_number(tmp_path):
    np.save(tmp_path / "fake_model.npy", np.array([1.0, 0.0, 0.0]))
    r = metrics.run_scorer(_fake(tmp_path), _imgs(n=1), ["crash"])
    assert isinstance(r, Unavailable) and "fake model exploded" in r.reason


def test_eval_env_commands_dry_run(tmp_path):
    cmds = eval_env.create_eval_env(tmp_path / "env", dry_run=True)
    assert cmds[0][1:3] == ["-m", "venv"] and "image-reward==1.5" in cmds[1]
    assert not (tmp_path / "env").exists()


def test_real_scorer_scripts_check_offline():
    """The real ImageReward/VBench scripts speak the protocol; here their packages are absent."""
    for scorer, pkg in (
        (eval_env.image_reward_scorer(sys.executable), "ImageReward"),
        (eval_env.vbench_scorer(sys.executable), "vbench"),
    ):
        ok, reason = scorer.available()
        assert not ok and (pkg in reason or "weights missing" in reason), reason
